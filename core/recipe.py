"""YAML recipes: which model, which stages and evaluators, with which configs.

Schema (``yaml.safe_load``)::

    run:                      # optional, see RunSpec
      seed: 0
      device: auto            # auto | cpu | cuda | cuda:N
      dtype: auto             # auto | float32 | bfloat16 | float16
    model: tiny-qwen3-vl      # or a mapping, see ModelSpec
    stages:
      - name: sft             # registered stage name
        id: sft               # optional, defaults to name; unique; used by overrides
        from: base            # optional: start from "base" or an earlier stage's checkpoint
                              # instead of the previous stage (branches, e.g. SFT vs GRPO)
        config: {lr: 1.0e-4}
    evaluators:
      - name: pope
        after: [sft]          # stage ids and/or "base"; default: after the last stage
        config: {}

Overrides (``ftib run CONFIG key=value ...``) address the same tree with dots:
``stages.sft.lr=1e-4`` (the ``config`` level is implicit), ``evaluators.pope.limit=50``,
``run.seed=3``, ``model.name_or_path=/path`` (or ``model=/path``). Values are parsed as
YAML scalars/lists (``true``, ``3``, ``[1, 2]``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ftib.core import config as cfg
from ftib.core.errors import ConfigError, PluginError, did_you_mean
from ftib.core.registry import EVALUATORS, STAGES, Registry

TOP_LEVEL_KEYS = ("run", "model", "stages", "evaluators")
BASE_POINT = "base"
#: run settings that do not change results (a run may move device, a limit may rise)
RESULT_NEUTRAL_RUN_KEYS = ("device", "max_rollout_gib")
#: Evaluator entry keys that do not change a result (left out of every fingerprint).
RESULT_NEUTRAL_EVAL_KEYS = ("target",)
#: Most YAML nodes a recipe may expand to, aliases counted at every use. A real recipe
#: has a few hundred; an alias bomb ("billion laughs") has billions in a kilobyte.
MAX_YAML_NODES = 100_000


def _expanded_size(node: yaml.Node, where: str, memo: dict[int, int], stack: set[int]) -> int:
    """Nodes ``node`` stands for once every alias is expanded (shared nodes counted at
    each use), computed on the composed graph in time linear in its distinct nodes."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in stack:
        raise ConfigError(f"{where}: a YAML alias refers to itself (a recursive structure)")
    stack.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(c, where, memo, stack) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, where, memo, stack) + _expanded_size(v, where, memo, stack)
                    for k, v in node.value)
    stack.discard(key)
    memo[key] = size
    return size


def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` that first bounds the alias expansion (:data:`MAX_YAML_NODES`)
    on the node graph, before any Python object is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, where, {}, set())
        if size > MAX_YAML_NODES:
            raise ConfigError(f"{where}: the YAML expands to more than {MAX_YAML_NODES} nodes "
                              f"({size}, through aliases); refusing it (an alias bomb?)")
        return loader.construct_document(node)
    finally:
        loader.dispose()


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Process-wide settings of a run."""

    seed: int = 0
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: refuse a recipe whose rough rollout memory estimate (see :func:`check_limits`)
    #: exceeds this many GiB, before any work.
    max_rollout_gib: float = 32.0

    def __post_init__(self) -> None:
        if self.max_rollout_gib <= 0:
            raise ValueError(f"max_rollout_gib must be > 0, got {self.max_rollout_gib}")


@dataclass(frozen=True, kw_only=True)
class KernelsSpec:
    """Optional fused-kernel libraries applied to the model each time it loads.

    Attributes:
        liger: liger-kernel's Triton kernels on the model instance (fused linear
            cross-entropy, RMSNorm, SwiGLU where the model type has them); needs the
            ``gpu`` extra and a CUDA device, and raises otherwise.

    Its fields are the known ``model.kernels`` options (``ftib.models.bundle.KERNEL_OPTIONS``
    is derived from them).
    """

    liger: bool = False


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The model the first stage starts from (hub name, local directory or preset).

    ``revision``, ``attn_implementation`` (``sdpa`` when unset; ``flash_attention_2``
    needs flash-attn and CUDA) and ``trust_remote_code`` go to ``from_pretrained``;
    ``kernels`` selects optional kernel libraries. They apply to every load of the
    model in the run (each stage's checkpoint, the evaluators). ``preset_overrides``
    changes a preset's sizes (``{hidden_size: 128, image_size: 48}``; see
    :class:`ftib.models.presets.PresetConfig`) and is only valid with a preset name.
    """

    name_or_path: str
    revision: str | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    kernels: KernelsSpec = KernelsSpec()
    preset_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageEntry:
    id: str
    name: str
    plugin: type
    config: Any
    start_from: str | None = None  # "base" or an earlier stage id; None = the previous stage


@dataclass(frozen=True)
class EvalEntry:
    id: str
    name: str
    plugin: type
    config: Any
    after: tuple[str, ...]
    #: ``target: {metric: value}`` - the score aimed at, drawn and checked in the run report
    #: (result-neutral: not in any fingerprint, so changing it recomputes nothing)
    target: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    run: RunSpec
    model: ModelSpec
    stages: tuple[StageEntry, ...]
    evaluators: tuple[EvalEntry, ...]
    source: Path | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe (every default filled in), JSON-ready."""
        return {
            "run": cfg.to_dict(self.run),
            "model": cfg.to_dict(self.model),
            "stages": [
                {"id": s.id, "name": s.name, "config": cfg.to_dict(s.config),
                 **({"from": s.start_from} if s.start_from else {})} for s in self.stages
            ],
            "evaluators": [
                {"id": e.id, "name": e.name, "after": list(e.after), "config": cfg.to_dict(e.config),
                 **({"target": dict(e.target)} if e.target else {})}
                for e in self.evaluators
            ],
        }

    def _as_of(self, previous: dict[str, Any]) -> dict[str, Any]:
        """:meth:`to_dict`, less the options ``previous`` lacks that sit at their defaults."""
        d = self.to_dict()
        d["run"] = cfg.without_new_defaults(self.run, previous.get("run"))
        d["model"] = cfg.without_new_defaults(self.model, previous.get("model"))
        sections: tuple[tuple[str, Sequence[Any]], ...] = (("stages", self.stages), ("evaluators", self.evaluators))
        for section, items in sections:
            old = {e.get("id"): e.get("config") for e in previous.get(section) or [] if isinstance(e, dict)}
            for entry, item in zip(d[section], items):
                if item.id in old:
                    entry["config"] = cfg.without_new_defaults(item.config, old[item.id])
        return d

    def fingerprint(self) -> str:
        """Hash of everything that changes results (run.device excluded: a run may move)."""
        d = self.to_dict()
        d["run"] = {k: v for k, v in d["run"].items() if k not in RESULT_NEUTRAL_RUN_KEYS}
        d["evaluators"] = [{k: v for k, v in e.items() if k not in RESULT_NEUTRAL_EVAL_KEYS} for e in d["evaluators"]]
        blob = json.dumps(d, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()

    def point_fingerprints(self, previous: dict[str, Any] | None = None) -> dict[str, str]:
        """One hash per pipeline point: ``base`` (run settings without the device, and
        the model), each stage id (its input point's hash + its own entry), and each
        ``<point>/<evaluator id>`` (that point's hash + the evaluator's entry). A stage's
        hash therefore covers exactly what its result depends on: changing an
        evaluator or a later stage leaves it unchanged.

        ``previous``: the resolved recipe an existing run recorded (its manifest's
        ``config``). Options that it lacks and that this recipe leaves at their defaults
        (added to ftib since; :func:`~ftib.core.config.without_new_defaults`) are left
        out, so upgrading ftib does not make a run's finished stages look changed."""
        return points_of(self.to_dict() if previous is None else self._as_of(previous))

    def data_files(self) -> dict[str, Path]:
        """Every input path named by a config field, keyed by its dotted key."""
        out: dict[str, Path] = {}
        for s in self.stages:
            out.update(cfg.file_fields(s.config, f"stages.{s.id}"))
        for e in self.evaluators:
            out.update(cfg.file_fields(e.config, f"evaluators.{e.id}"))
        return out


def points_of(d: dict[str, Any]) -> dict[str, str]:
    """The point fingerprints of a resolved recipe dict (:meth:`Recipe.point_fingerprints`)."""

    def h(*parts: Any) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    out = {BASE_POINT: h({k: v for k, v in d["run"].items() if k not in RESULT_NEUTRAL_RUN_KEYS}, d["model"])}
    prev = BASE_POINT
    for s in d["stages"]:
        src = s.get("from") or prev
        out[s["id"]] = h(out[src], s)
        prev = s["id"]
    for e in d["evaluators"]:
        entry = {k: v for k, v in e.items() if k != "after" and k not in RESULT_NEUTRAL_EVAL_KEYS}
        for point in e["after"]:
            out[f"{point}/{e['id']}"] = h(out[point], entry)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"stages.sft.lr=1e-4"`` -> (["stages", "sft", "lr"], 1e-4)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = safe_yaml(raw, f"override {key}") if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}") from exc
    return key.split("."), value


def _entry_index(entries: list, ident: str, section: str) -> int:
    ids = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            continue
        eid = entry.get("id", entry.get("name"))
        ids.append(str(eid))
        if eid == ident:
            return i
    raise ConfigError(f"{section}.{ident}: no such {section[:-1]} in the recipe; {did_you_mean(ident, ids)}")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of the raw recipe with ``key=value`` overrides applied."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        head = path[0]
        if head not in TOP_LEVEL_KEYS:
            raise ConfigError(f"override {'.'.join(path)}: unknown key {head!r}; {did_you_mean(head, TOP_LEVEL_KEYS)}")
        if head in ("stages", "evaluators"):
            if len(path) < 3:
                raise ConfigError(
                    f"override {'.'.join(path)}: use {head}.<id>.<key>=value "
                    f"(e.g. stages.sft.lr=1e-4)"
                )
            entries = raw.setdefault(head, [])
            if not isinstance(entries, list):
                raise ConfigError(f"override {'.'.join(path)}: {head} in the recipe is a "
                                  f"{type(entries).__name__}, not a list of entries")
            idx = _entry_index(entries, path[1], head)
            entry = entries[idx]
            rest = path[2:]
            if head == "evaluators" and rest == ["after"]:
                entry["after"] = value
                continue
            if head == "evaluators" and rest[0] == "target":  # evaluators.pope.target.accuracy=0.85
                if len(rest) == 1:
                    entry["target"] = value
                else:
                    if not isinstance(entry.get("target") or {}, dict):
                        raise ConfigError(f"override {'.'.join(path)}: evaluators.{path[1]}.target in the "
                                          "recipe is not a mapping")
                    entry["target"] = {**(entry.get("target") or {}), "/".join(rest[1:]): value}
                continue
            if rest[0] == "config":  # tolerate the explicit form stages.sft.config.lr
                rest = rest[1:]
            node = entry.setdefault("config", {}) or {}
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(path)}: {head}.{path[1]}.config in the recipe is a "
                                  f"{type(node).__name__}, not a mapping")
            entry["config"] = node
        elif head == "model":
            rest = path[1:]
            if not rest:
                raw["model"] = value
                continue
            if isinstance(raw.get("model"), str):
                raw["model"] = {"name_or_path": raw["model"]}
            node = raw.setdefault("model", {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(path)}: model in the recipe is a "
                                  f"{type(node).__name__}, not a mapping or a name")
        else:
            rest = path[1:]
            if not rest:
                raise ConfigError("override run: use run.<key>=value")
            node = raw.setdefault("run", {}) or {}
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(path)}: run in the recipe is a "
                                  f"{type(node).__name__}, not a mapping")
            raw["run"] = node
        for part in rest[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(path)}: {part!r} is not a mapping")
            node = nxt
        node[rest[-1]] = value
    return raw


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist")
    try:
        data = safe_yaml(path.read_text(encoding="utf-8"), f"recipe {str(path)!r}")
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not UTF-8 text: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r}: the top level must be a mapping")
    return data


def _entries(raw: Any, section: str) -> list[Mapping[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{section}: expected a list of {{name, config}} entries")
    for i, e in enumerate(raw):
        if not isinstance(e, Mapping) or "name" not in e:
            raise ConfigError(f"{section}[{i}]: each entry needs at least a 'name'")
        for key in ("name", "id"):
            if key in e and not isinstance(e[key], str):
                raise ConfigError(f"{section}[{i}].{key}: expected str, got {type(e[key]).__name__} {e[key]!r}")
    return raw


def _entry_head(e: Mapping[str, Any], section: str, link: str, seen: set[str],
                reserved: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """``(id, name, where)`` of one ``stages``/``evaluators`` entry, after checking its
    keys (``name``, ``id``, ``config``, the section's ``link``: ``from`` or ``after``, and
    ``extra``) and that its id is new (recorded in ``seen``) and not ``reserved``."""
    name = str(e["name"])
    ident = str(e.get("id", name))
    where = f"{section}.{ident}"
    allowed = ["name", "id", "config", link, *extra]
    for key in e:
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: unknown key; {did_you_mean(str(key), allowed)}")
    if ident in seen or ident in reserved:
        kind = "stage" if section == "stages" else "evaluator"
        raise ConfigError(f"{where}: {kind} id {ident!r} is used twice{' or reserved' if reserved else ''}; "
                          f"give one an 'id'")
    seen.add(ident)
    return ident, name, where


def _entry_plugin(registry: Registry, group: str, section: str, i: int, name: str) -> Any:
    """The plugin class an entry names; an unknown name is a :class:`ConfigError` at
    ``<section>[i].name``."""
    try:
        return registry.load(group, name)
    except PluginError as exc:
        raise ConfigError(f"{section}[{i}].name: {exc}") from exc


def build_recipe(
    raw: Mapping[str, Any], registry: Registry, *, source: Path | None = None
) -> Recipe:
    """Validate a raw recipe completely: plugins resolved, configs built, files checked."""
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"{key}: unknown top-level key; {did_you_mean(str(key), TOP_LEVEL_KEYS)}")
    run = cfg.build(RunSpec, raw.get("run"), where="run")
    model_raw = raw.get("model")
    if model_raw is None:
        raise ConfigError("model: required key is missing (a hub name, local path or preset)")
    if isinstance(model_raw, str):
        model_raw = {"name_or_path": model_raw}
    model = cfg.build(ModelSpec, model_raw, where="model")

    stages: list[StageEntry] = []
    seen: set[str] = set()
    for i, e in enumerate(_entries(raw.get("stages"), "stages")):
        sid, name, where = _entry_head(e, "stages", "from", seen, reserved=(BASE_POINT,))
        plugin = _entry_plugin(registry, STAGES, "stages", i, name)
        start_from = e.get("from")
        if start_from is not None:
            start_from = str(start_from)
            earlier = [BASE_POINT] + [s.id for s in stages]
            if start_from not in earlier:
                raise ConfigError(f"{where}.from: {start_from!r} is not 'base' or an earlier stage; "
                                  f"{did_you_mean(start_from, earlier)}")
        stages.append(StageEntry(sid, name, plugin, cfg.build(plugin.Config, e.get("config"), where=where),
                                 start_from))

    points = [BASE_POINT] + [s.id for s in stages]
    evals: list[EvalEntry] = []
    eval_ids: set[str] = set()
    for i, e in enumerate(_entries(raw.get("evaluators"), "evaluators")):
        eid, name, where = _entry_head(e, "evaluators", "after", eval_ids, extra=("target",))
        after = e.get("after")
        if after is None:
            after = [points[-1]]
        elif isinstance(after, str):
            after = [after]
        if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
            raise ConfigError(f"{where}.after: expected a stage id or a list of them "
                              f"({', '.join(points)}), got {after!r}")
        for a in after:
            if a not in points:
                raise ConfigError(f"{where}.after: {a!r} is not a stage id; {did_you_mean(str(a), points)}")
        plugin = _entry_plugin(registry, EVALUATORS, "evaluators", i, name)
        evals.append(
            EvalEntry(eid, name, plugin, cfg.build(plugin.Config, e.get("config"), where=where), tuple(after),
                      target=_targets(e.get("target"), where))
        )
    return Recipe(run, model, tuple(stages), tuple(evals), source=source, raw=dict(raw))


def _targets(raw: Any, where: str) -> dict[str, float]:
    """An evaluator's ``target: {metric: value}`` (metric names as the evaluator reports
    them, e.g. ``accuracy``, ``random/accuracy``, ``perception``), checked: a mapping of
    names to numbers."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}.target: expected a mapping of metric names to numbers "
                          f"(e.g. {{accuracy: 0.85}}), got {raw!r}")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}.target.{key}: expected a number, got {value!r}")
        out[str(key)] = float(value)
    return out


def load_recipe(
    path: Path, overrides: Sequence[str] = (), registry: Registry | None = None
) -> Recipe:
    """Read, override and validate a recipe file. Relative paths inside the recipe are
    resolved against the current directory (as typed on the command line)."""
    raw = apply_overrides(read_yaml(Path(path)), overrides)
    return build_recipe(raw, registry or Registry(), source=Path(path))


@dataclass(frozen=True, kw_only=True)
class ModelLimits:
    """What the recipe's model allows (``None``: unknown, not checked)."""

    context: int | None = None  # max_position_embeddings
    vocab: int | None = None
    hidden: int | None = None
    layers: int | None = None


#: Config fields that count tokens of one sequence and must fit the model's context.
LENGTH_FIELDS = ("max_new_tokens", "block_size", "max_length", "max_prompt_length")


def rollout_bytes(config: Mapping[str, Any], limits: ModelLimits) -> int | None:
    """Rough peak memory of one GRPO micro-batch of rollouts, in bytes:
    ``prompts x G x (prompt + new tokens)`` tokens, each with float32 logits over the
    vocabulary, a float32 KV cache (2 x layers x hidden) and training activations
    (about 34 x hidden values per layer and token: Korthikanti et al. 2022, eq. 1
    without the attention-score term). ``None`` for a config without ``group_size``."""
    if "group_size" not in config or limits.vocab is None or limits.hidden is None or limits.layers is None:
        return None
    prompts = int((config.get("train") or {}).get("batch_size", 1))
    length = int(config.get("max_prompt_length", 0)) + int(config.get("max_new_tokens", 0))
    tokens = prompts * int(config["group_size"]) * length
    per_token = 4 * limits.vocab + 4 * 2 * limits.layers * limits.hidden + 2 * 34 * limits.hidden * limits.layers
    return tokens * per_token


def check_limits(recipe: Recipe, limits: ModelLimits) -> None:
    """Refuse, before any work, sequence lengths past the model's context and rollouts
    whose :func:`rollout_bytes` exceed ``run.max_rollout_gib``. Errors name the key."""
    entries = [(f"stages.{s.id}", cfg.to_dict(s.config)) for s in recipe.stages]
    entries += [(f"evaluators.{e.id}", cfg.to_dict(e.config)) for e in recipe.evaluators]
    for where, conf in entries:
        if not isinstance(conf, Mapping):
            continue
        if limits.context is not None:
            for name in LENGTH_FIELDS:
                value = conf.get(name)
                if isinstance(value, int) and value > limits.context:
                    raise ConfigError(f"{where}.{name}: {value} exceeds the model's context of "
                                      f"{limits.context} tokens (max_position_embeddings)")
            prompt_len, new_tokens = conf.get("max_prompt_length"), conf.get("max_new_tokens")
            if isinstance(prompt_len, int) and isinstance(new_tokens, int) and prompt_len + new_tokens > limits.context:
                raise ConfigError(f"{where}.max_prompt_length + max_new_tokens = {prompt_len} + {new_tokens} exceeds "
                                  f"the model's context of {limits.context} tokens")
        need = rollout_bytes(conf, limits)
        if need is not None and need > recipe.run.max_rollout_gib * 2**30:
            raise ConfigError(
                f"{where}: one rollout micro-batch needs about {need / 2**30:.1f} GiB (train.batch_size x "
                f"group_size x (max_prompt_length + max_new_tokens) tokens), above run.max_rollout_gib="
                f"{recipe.run.max_rollout_gib:g}; lower one of them or raise the limit"
            )
