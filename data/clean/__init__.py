"""``ftib data clean``: Tibetan corpus hygiene as a datatrove pipeline.

Modules: :mod:`~ftib.data.clean.rules` (pure repair rules and measures, no datatrove),
:mod:`~ftib.data.clean.config` (the YAML config), :mod:`~ftib.data.clean.blocks`
(datatrove steps), :mod:`~ftib.data.clean.pipeline` (stages, executors, output folder)
and :mod:`~ftib.data.clean.report`. Everything but ``rules`` and ``config`` needs the
``clean`` extra (datatrove). See ``docs/data.md``, "Cleaning a corpus".
"""

from ftib.data.clean.config import CleanConfig, load_clean_config

__all__ = ["CleanConfig", "load_clean_config"]
