"""ftib's microkernel: plugin interfaces, registry, typed config, pipeline, run directory.

``ftib.core`` imports no plugin; stages, evaluators and rewards are found through the
registry (entry points). See :mod:`ftib.core.interfaces` for the contracts.
"""

from ftib.core.config import build as build_config
from ftib.core.config import path_field
from ftib.core.errors import ConfigError, FtibError, PluginError, RunDirError
from ftib.core.interfaces import (
    DistInfo,
    EvalResult,
    Evaluator,
    Reward,
    RewardContext,
    RunContext,
    Stage,
    StageResult,
)
from ftib.core.registry import Registry

__all__ = [
    "ConfigError",
    "DistInfo",
    "EvalResult",
    "Evaluator",
    "FtibError",
    "PluginError",
    "Registry",
    "Reward",
    "RewardContext",
    "RunContext",
    "RunDirError",
    "Stage",
    "StageResult",
    "build_config",
    "path_field",
]
