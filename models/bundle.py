"""Load a model with its tokenizer and image processor: :func:`load_bundle`.

One code path serves hub names, local directories and the tiny presets: a preset
name is first turned into its cached directory (built on first use), then everything
loads through the ``transformers`` Auto classes. Image processors load with the Pillow
backend (``backend="pil"``) so nothing needs torchvision.

Optional accelerators are chosen by the recipe's ``model`` section and never fall back
silently: ``attn_implementation: flash_attention_2`` needs the ``flash-attn`` package
and a CUDA device; ``kernels: {liger: true}`` applies liger-kernel's Triton kernels to the
loaded model instance (:func:`apply_liger`). A request that cannot be met raises
:class:`~ftib.core.errors.FtibError` before any weights are used.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError
from ftib.core.recipe import KernelsSpec
from ftib.models.chat import ChatProcessor
from ftib.models.presets import PRESETS, SHIPPED, get_preset, is_preset, looks_like_preset, preset_dir

log = logging.getLogger("ftib.models")

DTYPES = ("float32", "bfloat16", "float16")
# The recipe's model.kernels options, as the recipe schema declares them (one list).
KERNEL_OPTIONS = tuple(f.name for f in dataclasses.fields(KernelsSpec))
GPU_EXTRA = "pip install 'ftib[gpu]'"
# attn_implementation -> the package it needs (transformers' names).
_FLASH_PACKAGES = {"flash_attention_2": ("flash_attn", "flash-attn")}


@dataclass
class ModelBundle:
    """A model and everything needed to feed it.

    Attributes:
        model: ``Qwen3VLForConditionalGeneration``-like (``multimodal``) or a causal LM.
        tokenizer: the Hugging Face tokenizer.
        image_processor: Pillow image processor, ``None`` for text-only models.
        chat: the :class:`~ftib.models.chat.ChatProcessor` building inputs.
        source: what was loaded (preset name, directory or hub name).
        path: the directory the weights came from, when local.
    """

    model: Any
    tokenizer: Any
    image_processor: Any
    chat: ChatProcessor
    source: str
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def multimodal(self) -> bool:
        return self.image_processor is not None

    @property
    def processor(self) -> ChatProcessor:
        """The input builder; ``processor.save_pretrained(dir)`` writes tokenizer and
        image processor (what a checkpoint needs besides the weights)."""
        return self.chat

    def with_tokenizer(self, tokenizer: Any) -> ModelBundle:
        """The same model with another tokenizer (e.g. after vocabulary extension)."""
        return dataclasses.replace(self, tokenizer=tokenizer,
                                   chat=ChatProcessor(tokenizer, self.image_processor, source_dir=self.chat.source_dir))

    def save(self, out: Path | str) -> Path:
        """``save_pretrained`` model, tokenizer (with its own chat template) and processor,
        keeping the source checkpoint's format files (:data:`ftib.models.chat.FORMAT_FILES`)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.chat.save_pretrained(out)
        return out


def _is_multimodal(config: Any) -> bool:
    return getattr(config, "vision_config", None) is not None


def load_bundle(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: str | Path | None = None,
    preset_overrides: dict[str, Any] | None = None,
    kernels: Mapping[str, Any] | None = None,
) -> ModelBundle:
    """Load model + tokenizer + image processor.

    Args:
        name_or_path: a preset name (``tiny-qwen3-vl``, ``tiny-qwen3``), a local
            directory written by ``save_pretrained``, or a hub name.
        revision, attn_implementation, trust_remote_code: passed to ``from_pretrained``
            (the recipe's ``model`` section).
        device: move the model there (default: stay on CPU).
        dtype: ``float32``/``bfloat16``/``float16``; default: the checkpoint's dtype.
        cache_dir: where presets are built and cached (default ``$FTIB_CACHE_DIR``).
        preset_overrides: preset fields to change (sizes ...); only for preset names.
        kernels: optional fused-kernel libraries, ``{"liger": True}`` applies
            :func:`apply_liger` after the model is on ``device`` (recorded in
            ``bundle.extra["kernels"]``).

    Raises:
        FtibError: the model cannot be loaded, or an accelerator request cannot be met
            (package missing, device not CUDA, model type not supported).
    """
    src = resolve_source(name_or_path, cache_dir=cache_dir, preset_overrides=preset_overrides)
    kernels = _check_options(dtype=dtype, kernels=kernels, attn_implementation=attn_implementation, device=device)
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        common["revision"] = revision
    config = _load_config(src, common)
    model = _load_model(src, config, common, attn_implementation=attn_implementation, dtype=dtype)
    tokenizer, image_processor = _load_processors(src, config, common)
    if device is not None:
        model.to(device)
    model.eval()
    extra: dict[str, Any] = {}
    if kernels.get("liger"):
        extra["kernels"] = {"liger": list(apply_liger(model))}
    return ModelBundle(model=model, tokenizer=tokenizer, image_processor=image_processor,
                       chat=ChatProcessor(tokenizer, image_processor, source_dir=src.path), source=src.source,
                       path=src.path, extra=extra)


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """Where :func:`load_bundle` loads a model from.

    Attributes:
        source: the name or path as given.
        path: the local directory (a preset's cached build or a ``save_pretrained``
            directory), None for a hub name.
        location: what ``from_pretrained`` is given.
    """

    source: str
    path: Path | None
    location: str


def resolve_source(name_or_path: str | Path, *, cache_dir: str | Path | None = None,
                   preset_overrides: dict[str, Any] | None = None) -> ModelSource:
    """Turn a preset name into its cached directory (built on first use) and check a
    local path; a hub name passes through.

    Raises:
        FtibError: a misspelt preset, overrides for something that is not a preset, a file
            or a directory without ``config.json`` given as the model.
    """
    source = str(name_or_path)
    meant = looks_like_preset(source)
    if meant is not None:
        from ftib.core.errors import did_you_mean
        from ftib.models.presets import all_preset_names

        raise FtibError(f"unknown model preset {source!r} (not a local directory either); "
                        f"{did_you_mean(source, all_preset_names())}")
    if preset_overrides and not is_preset(source):
        raise FtibError(f"preset_overrides given but {source!r} is not a preset ({', '.join(PRESETS)})")
    if is_preset(source):
        path = preset_dir(source, cache_dir=cache_dir, **(preset_overrides or {}))
        return ModelSource(source=source, path=path, location=str(path))
    p = Path(source).expanduser()
    if p.exists() and not p.is_dir():
        raise FtibError(f"model path {source!r} is a file; expected a directory written by save_pretrained")
    if p.is_dir() and not (p / "config.json").is_file():
        raise FtibError(f"model directory {source!r} has no config.json (not a save_pretrained directory)")
    return ModelSource(source=source, path=p if p.is_dir() else None, location=str(p) if p.is_dir() else source)


def _check_options(*, dtype: str | None, kernels: Mapping[str, Any] | None, attn_implementation: str | None,
                   device: str | None) -> dict[str, Any]:
    """Reject a load request that cannot be met before anything loads; returns the
    kernels options as a dict."""
    if dtype is not None and dtype not in DTYPES:
        raise FtibError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = dict(kernels or {})
    unknown = sorted(set(out) - set(KERNEL_OPTIONS))
    if unknown:
        raise FtibError(f"model.kernels: unknown option(s) {unknown}; known: {', '.join(KERNEL_OPTIONS)}")
    _check_attn_implementation(attn_implementation, device)
    if out.get("liger"):
        _import_liger()  # fail on a missing package before the weights load
    return out


def _load_config(src: ModelSource, common: dict[str, Any]) -> Any:
    """The model's ``transformers`` config, of a family ftib supports."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(src.location, **common)
    except OSError as exc:
        hint = "" if src.path else (f"; it is not a preset ({', '.join(PRESETS)}) nor a local directory, "
                                    "and the hub could not provide it")
        raise FtibError(f"cannot load model {src.source!r}{hint}: {exc}") from exc
    _check_family(config, str(src.path / "config.json") if src.path is not None else src.source)
    return config


def _load_model(src: ModelSource, config: Any, common: dict[str, Any], *, attn_implementation: str | None,
                dtype: str | None) -> Any:
    """The weights, through the Auto class of the config's kind (image-text or causal LM)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs: dict[str, Any] = dict(common)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    auto = AutoModelForImageTextToText if _is_multimodal(config) else AutoModelForCausalLM
    try:
        return auto.from_pretrained(src.location, **kwargs)
    except (ImportError, ValueError) as exc:
        if attn_implementation is None:
            raise
        raise FtibError(f"model.attn_implementation: {attn_implementation!r} cannot be used for "
                        f"{src.source!r}: {exc}") from exc


def _load_processors(src: ModelSource, config: Any, common: dict[str, Any]) -> tuple[Any, Any]:
    """(tokenizer, image processor or None for a text-only model)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src.location, **common)
    if src.path is not None:
        _template_fallback(tokenizer, src.path)
    image_processor = (AutoImageProcessor.from_pretrained(src.location, backend="pil", **common)
                       if _is_multimodal(config) else None)
    return tokenizer, image_processor


#: The model families ftib's stages know the anatomy and chat format of
#: (``config.model_type``).
#: Each is covered by a hub-faithful stand-in in ``tests/realpath``.
SUPPORTED_MODEL_TYPES = {"qwen3": "Qwen3", "qwen3_vl": "Qwen3-VL", "qwen3_5": "Qwen3.5"}


def _check_family(config: Any, where: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise FtibError(f"{where}: model_type {model_type!r} is not a supported family; ftib supports "
                        + ", ".join(f"{v} ({k})" for k, v in SUPPORTED_MODEL_TYPES.items()))


def _template_fallback(tokenizer: Any, path: Path) -> None:
    """Give the tokenizer its checkpoint's chat template when transformers did not attach
    one: ``chat_template.jinja``, then the processor-level ``chat_template.json`` (how
    Qwen3-VL ships it). Without any, :class:`ChatProcessor` fails naming the files."""
    if getattr(tokenizer, "chat_template", None):
        return
    import json

    if (path / "chat_template.jinja").is_file():
        tokenizer.chat_template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    elif (path / "chat_template.json").is_file():
        try:
            tokenizer.chat_template = json.loads((path / "chat_template.json").read_text(encoding="utf-8"))[
                "chat_template"]
        except (ValueError, KeyError) as exc:
            raise FtibError(f"{path / 'chat_template.json'}: no readable 'chat_template' ({exc})") from exc


def _is_cuda(device: Any) -> bool:
    return device is not None and str(device).split(":")[0] == "cuda"


def _check_attn_implementation(attn_implementation: str | None, device: str | None) -> None:
    """FlashAttention needs its package and a CUDA device; say so before loading."""
    if attn_implementation not in _FLASH_PACKAGES:
        return  # sdpa/eager/None run anywhere; transformers rejects unknown names
    module, package = _FLASH_PACKAGES[attn_implementation]
    if importlib.util.find_spec(module) is None:
        raise FtibError(
            f"model.attn_implementation: {attn_implementation} needs the {package} package, which is "
            f"not installed ({GPU_EXTRA} on a CUDA machine); use 'sdpa' (the default) otherwise"
        )
    if not _is_cuda(device):
        raise FtibError(f"model.attn_implementation: {attn_implementation} runs on CUDA only; "
                        f"the model is loaded on {device or 'cpu'} (set run.device: cuda, or use 'sdpa')")


def _import_liger() -> Any:
    try:
        from liger_kernel.transformers import monkey_patch
    except ImportError as exc:
        raise FtibError(
            f"model.kernels.liger: true needs the liger-kernel package (and Triton), which cannot be "
            f"imported ({exc}); install the `gpu` extra: {GPU_EXTRA}"
        ) from exc
    return monkey_patch


# liger-kernel's switches that act on the model instance; ``rope`` is left off because
# liger applies it by rebinding ``apply_rotary_pos_emb`` in the transformers module, which
# would change every model of that type in the process (the GRPO reference model, a
# second bundle), not just this one.
_LIGER_DEFAULTS = {"fused_linear_cross_entropy": True, "cross_entropy": False, "rope": False}
_LIGER_PATCHES = ("fused_linear_cross_entropy", "rms_norm", "swiglu", "geglu", "layer_norm", "rope")


def apply_liger(model: Any, **switches: bool) -> tuple[str, ...]:
    """Apply liger-kernel's Triton kernels to ``model`` (this instance only).

    Uses liger's per-model-type function (``apply_liger_kernel_to_qwen3``,
    ``apply_liger_kernel_to_qwen3_vl`` ...) with ``model=``: the forward becomes liger's
    fused linear cross-entropy forward (``model(..., labels=...)`` in training returns the
    loss without materialising logits; see ``LabelledLMTask.compute_loss``), and RMSNorm
    and SwiGLU modules get liger's kernels, with liger's defaults per model type.
    Module-level names that liger rebinds as a side effect are restored, so other
    models in the process keep the stock implementation.

    Args:
        model: a loaded transformers model, on its final device.
        switches: override liger's switches (``rms_norm=False`` ...); for tests.

    Returns:
        The names of the patches applied (also stored on the model, see :func:`liger_patches`).

    Raises:
        FtibError: liger-kernel does not import; the model is not on CUDA (unless
            ``TRITON_INTERPRET=1``, Triton's CPU interpreter); liger has no kernels for
            the model type.
    """
    monkey_patch = _import_liger()
    device = next(model.parameters()).device
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise FtibError(
            f"model.kernels.liger: liger-kernel's Triton kernels need a CUDA device; the model is on "
            f"{device} (set run.device: cuda, or TRITON_INTERPRET=1 to run them in Triton's CPU "
            f"interpreter, for tests only)"
        )
    model_type = getattr(model.config, "model_type", None)
    table = monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN
    fn = table.get(model_type)
    if fn is None:
        raise FtibError(f"model.kernels.liger: liger-kernel {_version('liger-kernel')} has no kernels for "
                        f"model type {model_type!r} ({type(model).__name__})")
    params = inspect.signature(fn).parameters
    chosen = {**{k: v for k, v in _LIGER_DEFAULTS.items() if k in params}, **switches}
    bad = sorted(set(chosen) - set(params) - {"model"})
    if bad:
        raise FtibError(f"apply_liger: {fn.__name__} has no switch {bad}")
    module = sys.modules[type(model).__module__]
    before = dict(vars(module))
    try:
        fn(model=model, **chosen)
    except Exception as exc:  # e.g. a transformers class this liger release expects is gone
        raise FtibError(
            f"model.kernels.liger: liger-kernel {_version('liger-kernel')} cannot patch {type(model).__name__} "
            f"under transformers {_version('transformers')}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:  # liger also rebinds module-level classes/functions: undo that
        for name in set(vars(module)) - set(before):
            delattr(module, name)
        for name, value in before.items():
            if vars(module).get(name) is not value:
                setattr(module, name, value)
    applied = tuple(p for p in _LIGER_PATCHES
                    if p in params and chosen.get(p, params[p].default) is True)
    model.ftib_liger_patches = applied
    log.info("liger-kernel %s applied to %s (%s): %s", _version("liger-kernel"), type(model).__name__,
             model_type, ", ".join(applied))
    return applied


def liger_patches(model: Any) -> tuple[str, ...]:
    """The liger-kernel patches applied to ``model`` (looked up through peft wrappers);
    empty when none were."""
    return tuple(getattr(model, "ftib_liger_patches", ()) or ())


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "(unknown version)"


def bundle_from_context(ctx: Any, *, dtype: str | None = None) -> ModelBundle:
    """The bundle a stage or evaluator starts from: ``ctx.bundle`` when alive, else
    :func:`load_bundle` on ``ctx.model_source`` with the recipe's model options, on
    ``ctx.device`` in ``dtype`` (default ``ctx.dtype``; a live bundle keeps its own)."""
    if ctx.bundle is not None:
        return ctx.bundle
    return load_bundle(ctx.model_source, device=ctx.device, dtype=dtype or ctx.dtype, **load_options(ctx))


def load_options(ctx: Any) -> dict[str, Any]:
    """:func:`load_bundle` keyword arguments from the recipe's ``model`` section for
    loading ``ctx.model_source`` (preset overrides only apply to a preset: a checkpoint
    already has its sizes)."""
    opts = {k: v for k, v in dict(ctx.model_options or {}).items() if k != "name_or_path"}
    if not is_preset(str(ctx.model_source)):
        opts.pop("preset_overrides", None)
    return opts


def model_limits(name_or_path: str, preset_overrides: Mapping[str, Any] | None = None) -> Any:
    """The context length and sizes of a model without loading its weights
    (:class:`ftib.core.recipe.ModelLimits`): from the preset's config, or from
    ``config.json`` of a local directory; a hub name not on disk gives unknown limits.
    Checks ``preset_overrides`` (types, known fields) on the way."""
    import json

    from ftib.core.recipe import ModelLimits

    source = str(name_or_path)
    if source in SHIPPED:  # pretrained weights: their own config.json (checksums checked)
        source, preset_overrides = str(preset_dir(source, **dict(preset_overrides or {}))), None
    elif is_preset(source):
        cfg = get_preset(source, **dict(preset_overrides or {}))
        return ModelLimits(context=cfg.max_position_embeddings, vocab=cfg.vocab_size, hidden=cfg.hidden_size,
                           layers=cfg.num_layers)
    if preset_overrides:
        raise FtibError(f"model.preset_overrides given but {source!r} is not a preset ({', '.join(PRESETS)})")
    config = Path(source).expanduser() / "config.json"
    if not config.is_file():
        return ModelLimits()
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FtibError(f"{config}: not a readable model config ({exc})") from exc
    text = data.get("text_config") if isinstance(data.get("text_config"), dict) else data

    def num(key: str) -> int | None:
        v = text.get(key, data.get(key))
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

    return ModelLimits(context=num("max_position_embeddings"), vocab=num("vocab_size"),
                       hidden=num("hidden_size"), layers=num("num_hidden_layers"))
