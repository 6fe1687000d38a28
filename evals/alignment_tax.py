"""Alignment tax: how much general (non-Tibetan) ability the adapted model lost.

The ``alignment_tax`` evaluator: per-token NLL increase (mean, p90) and KL(base ||
adapted) on held-out Chinese/English general text against a base model. The
computation and its exact definition live in :mod:`ftib.models.drift` (shared with the
GRPO stage's checkpoint selection); this module scores a run's model with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftib.core.interfaces import EvalResult, Evaluator, RunContext
from ftib.evals.loaders import check_data, load_items
# The computation lives in models/ (one home; the GRPO stage's checkpoint selection uses it too).
from ftib.models.drift import alignment_tax

__all__ = ["AlignmentTaxEvaluator", "alignment_tax", "resolve_base_model"]


def resolve_base_model(spec: str, run_dir: Path) -> str:
    """``stage:<id>`` -> that stage's checkpoint in this run (from ``manifest.json``);
    ``base`` -> the run's own starting model (the recipe's ``model.name_or_path``)."""
    if spec != "base" and not spec.startswith("stage:"):
        return spec
    import json

    from ftib.core import ConfigError

    if spec == "base":
        model = json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))["config"]["model"]
        if model.get("preset_overrides") or model.get("revision"):
            raise ConfigError("alignment_tax.base_model: 'base' stands for model.name_or_path alone, but this "
                              "run's model also sets preset_overrides or revision; name the base model's "
                              "directory instead")
        return str(model["name_or_path"])
    sid = spec.split(":", 1)[1]
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text(encoding="utf-8"))
    rec = manifest.get("stages", {}).get(sid)
    if rec is None or rec.get("status") != "completed" or not rec.get("checkpoint"):
        from ftib.core.errors import did_you_mean

        raise ConfigError(f"alignment_tax.base_model: stage {sid!r} has no completed checkpoint in this run; "
                          f"{did_you_mean(sid, manifest.get('stages', {}))}")
    return str(Path(run_dir) / rec["checkpoint"])


class AlignmentTaxEvaluator(Evaluator):
    """NLL/KL of the run's model against its base on held-out general text."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Attributes:
            data: ``ftibworld[:SIZE[:SEED]]`` (its held-out general text), a FTibWorld
                build folder, or general-text JSON lines (``id, lang, text``).
            base_model: the model before adaptation (directory, preset or hub name),
                ``base`` for the run's own starting model, or ``stage:<id>`` for the
                checkpoint an earlier stage of this run wrote.
            lang: keep only the texts of this language (``zh`` or ``en``, the ``lang``
                field): the tax in the model's dominant language, as the semantic-GRPO
                paper measures it on Chinese; ``None`` keeps every text.
            limit: first ``limit`` texts (of ``lang``) only.
            max_length: tokens per text.
        """

        base_model: str
        data: str = "ftibworld"
        lang: str | None = None
        limit: int | None = None
        max_length: int = 256

        def __post_init__(self) -> None:
            check_data(self.data)
            if self.lang is not None and self.lang not in ("zh", "en"):
                from ftib.core.errors import did_you_mean

                raise ValueError(f"lang must be zh, en or null, got {self.lang!r}; "
                                 f"{did_you_mean(self.lang, ('zh', 'en'))}")
            if self.max_length < 2:
                raise ValueError(f"max_length must be >= 2, got {self.max_length}")

    def evaluate(self, ctx: RunContext) -> EvalResult:
        from ftib.models.bundle import bundle_from_context, load_bundle

        cfg: AlignmentTaxEvaluator.Config = self.config  # type: ignore[assignment]
        items = load_items("alignment_tax", cfg.data, None, None)
        if cfg.lang is not None:
            kept = [it for it in items if it.meta.get("lang") == cfg.lang]
            if not kept:
                from ftib.core import ConfigError

                langs = sorted({str(it.meta.get("lang")) for it in items})
                raise ConfigError(f"alignment_tax.lang: {cfg.data} has no {cfg.lang!r} text; "
                                  f"its languages: {', '.join(langs)}")
            items = kept
        items = items[:cfg.limit] if cfg.limit is not None else items
        adapted = bundle_from_context(ctx)
        base = load_bundle(resolve_base_model(cfg.base_model, ctx.run_dir), device=ctx.device,
                           dtype=ctx.dtype)
        # A VLM's forward with text only is its language model's forward.
        metrics, records = alignment_tax(
            base.model, base.tokenizer, adapted.model, adapted.tokenizer,
            [it.question for it in items], max_length=cfg.max_length, ids=[it.id for it in items],
        )
        return EvalResult(metrics=metrics, records=records,
                          details={"base_model": cfg.base_model, "max_length": cfg.max_length,
                                   "lang": cfg.lang, "texts": len(items)})
