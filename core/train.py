"""The shared training loop used by every training stage.

A stage supplies a :class:`TrainTask` — which parameters train (in named groups), the
training samples and how to collate them, and how to compute the loss of one
micro-batch — and the loop owns everything else: AdamW with parameter groups, warm-up +
cosine/linear/constant schedule, gradient accumulation with exact token normalisation,
autocast (bf16/fp16 on CUDA, fp32 on CPU by default), gradient checkpointing, clipping,
step-level checkpoints written atomically, resume, early stop on a non-finite loss,
metrics and a progress bar.

Order of one optimiser step (``accum`` micro-batches)::

    batches = next `accum` micro-batches of the seeded per-epoch permutation
    total   = sum(task.loss_normaliser(b) for b in batches)      # e.g. real label tokens
    for b in batches:
        out = task.compute_loss(b)        # out.loss = SUM of per-token losses of b
        (out.loss / total).backward()     # so the step's loss is the mean over all tokens
    clip -> optimiser.step -> scheduler.step -> zero_grad

Normalising by the window's total token count (rather than averaging per micro-batch
means) makes the gradient independent of how the tokens are split into micro-batches —
the gradient-accumulation bug class fixed in transformers 4.46.

Resume: a step checkpoint holds the trainable parameters, optimiser, scheduler, RNG
states (python, numpy, torch, CUDA) and the data position (epoch, offset). Data order is
a pure function of (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted one would, and on CPU produces the same losses to float32 rounding (bit for
bit in the same process; across processes MKL may round a GEMM differently for buffers
at other addresses, see tests/core/test_kill_resume.py).

Distributed (``train.distributed: ddp | fsdp2`` under ``torchrun``, see
:mod:`ftib.core.distributed` and ``docs/distributed.md``): ``batch_size`` stays the
per-rank micro-batch, so one optimiser step sees the **global batch**
``batch_size * grad_accum * world_size`` samples. Each micro-batch position draws
``batch_size * world_size`` indices from the same seeded permutation and rank ``r``
takes the ``r``-th contiguous slice, so the samples of a step are exactly those of a
single process with ``batch_size * world_size``. The normaliser is summed over ranks
before any backward, and each rank's loss is multiplied by ``world_size`` to undo the
gradient averaging, so the step's gradient is the same token mean as in one process.
Loss, tokens and samples are summed over ranks, task metrics and times averaged, peak
memory maximised; only rank 0 writes metrics, the final model and (with ``ddp``) step
checkpoints, which are the plain trainable state dict and therefore resume on any world
size (the data position is global). With ``fsdp2`` a step checkpoint stores the
trainable parameters and optimiser state with ``torch.distributed.checkpoint`` (one
shard per rank under ``dcp/``), which reloads on any world size, a single process
included; :func:`consolidate_checkpoint` writes it as one ``torch.save`` file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import torch

from ftib.core import distributed as D
from ftib.core.errors import FtibError, RunDirError
from ftib.core.interfaces import RunContext
from ftib.core.rundir import atomic_dir, atomic_write_json, sha256_path

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

log = logging.getLogger("ftib.train")

STEP_DIR_FORMAT = "step-{:06d}"


def step_of(step_dir: Path) -> int | None:
    """The step of a checkpoint folder named as :data:`STEP_DIR_FORMAT` (``step-<N>``);
    ``None`` for any other name."""
    head, _, tail = step_dir.name.partition("-")
    return int(tail) if head == "step" and tail.isdigit() else None


class TrainingDiverged(FtibError):
    """The loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of the shared loop; every training stage nests one as ``train``.

    Attributes:
        max_steps: optimiser steps (not micro-batches).
        batch_size: samples per micro-batch.
        grad_accum: micro-batches per optimiser step.
        lr: peak learning rate (a group's ``lr_scale`` multiplies it).
        weight_decay: AdamW decay for groups that do not set their own.
        betas, eps: AdamW.
        warmup_steps: linear warm-up from 0 to ``lr``.
        schedule: decay after warm-up.
        min_lr_ratio: floor of the decay, as a fraction of ``lr``.
        max_grad_norm: clip the global gradient norm (``None`` = no clipping).
        precision: ``auto`` = bf16 autocast on CUDA where supported, or when the run's
            dtype is bfloat16 (so float32 master weights compute in bf16 too), else fp32.
        master_weights: dtype the trainable parameters are kept (and updated) in, with
            their gradients and optimiser state: ``float32`` (default; master weights
            under bf16 autocast, also for the parts of a bf16-loaded model that train:
            embeddings, the merger, peft copies) or ``bfloat16`` (pure bf16 training).
        gradient_checkpointing: recompute activations in backward (HF models).
        checkpoint_every: write a step checkpoint every N steps (0 = only the last).
        keep_checkpoints: how many step checkpoints to keep.
        log_every: log metrics every N steps.
        tensorboard: also write TensorBoard events under ``work_dir/tb``.
        distributed: data parallelism under ``torchrun``: ``ddp`` (replicated model,
            gradients all-reduced) or ``fsdp2`` (``fully_shard``: parameters, gradients
            and optimiser state sharded). ``batch_size`` is per rank; the global batch
            is ``batch_size * grad_accum * world_size``. With one process both run as
            ``none``; ``none`` under a multi-process launch is an error.
    """

    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 1
    tensorboard: bool = False
    distributed: Literal["none", "ddp", "fsdp2"] = "none"
    master_weights: Literal["float32", "bfloat16"] = "float32"

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ValueError("train.warmup_steps/checkpoint_every must be >= 0 and keep_checkpoints >= 1")


@dataclass
class ParamGroup:
    """Named trainable parameters with optional overrides of the loop's settings."""

    name: str
    params: list[torch.nn.Parameter]
    lr_scale: float = 1.0
    weight_decay: float | None = None
    #: ``(param, rows)``: rows of a parameter of this group whose gradient the loop zeroes
    #: in place after the gradients are reduced and before clipping (so they do not move:
    #: with a zero gradient AdamW's moments stay 0; give such a group no weight decay).
    #: Works on plain, DDP-reduced and FSDP2-sharded gradients (the local shard's rows).
    fixed_rows: list[tuple[torch.nn.Parameter, slice | list[int]]] = field(default_factory=list)


def zero_fixed_rows(pairs: Sequence[tuple[torch.nn.Parameter, slice | list[int]]]) -> None:
    """Zero the gradient rows of :attr:`ParamGroup.fixed_rows` pairs in place (what the
    loop does after reducing the gradients; for loops of one's own)."""

    for p, rows in pairs:
        if p.grad is not None:
            D.zero_grad_rows(p.grad, rows)


@dataclass
class LossOutput:
    """Result of one micro-batch.

    Attributes:
        loss: scalar, the SUM of per-item losses of this micro-batch (see module doc).
        tokens: real (non-padding) tokens processed, for tokens/s.
        samples: samples processed, for samples/s.
        metrics: extra scalars to average over the step and log.
    """

    loss: torch.Tensor
    tokens: int
    samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class TrainTask(Protocol):
    """What a training stage gives the loop."""

    model: torch.nn.Module

    def param_groups(self) -> list[ParamGroup]:
        """Trainable parameters; everything else must have ``requires_grad=False``."""

    def train_samples(self) -> Sequence[Any]:
        """The training samples (indexable, sized); the loop shuffles them per epoch."""

    def collate(self, samples: list[Any]) -> Any:
        """Turn a list of samples into one micro-batch."""

    def loss_normaliser(self, batch: Any) -> int:
        """How many loss terms ``compute_loss(batch)`` sums (e.g. label tokens != -100)."""

    def compute_loss(self, batch: Any) -> LossOutput:
        """Forward one micro-batch; return the summed loss (autocast is already active)."""

    def save_model(self, out_dir: Path) -> None:
        """Write a transformers/peft-loadable checkpoint of the model to ``out_dir``."""

    # Optional: ``supports_fsdp2 = False`` on a task whose loss does not run the model
    # through ``model(...)`` (FSDP2 unshards parameters in the root module's forward
    # hook); ``train.distributed: fsdp2`` is then refused instead of failing mid-step.
    #
    # Optional: ``collate_times``: names of the task's ``time/*`` metrics (seconds, summed
    # over the step's micro-batches) that its ``collate`` spent (GRPO's rollout phases);
    # ``data_time_s`` excludes them, so that ``step_time_s`` = ``data_time_s`` + those +
    # ``time/forward_s`` + ``time/backward_s`` + ``time/optimizer_s`` (+ bookkeeping).
    #
    # Optional: ``after_step(step, metrics, history) -> StepCheck`` is called on every
    # rank after each optimiser step, before its metrics row is logged and before its
    # step checkpoint: ``metrics`` are the step's (reduced) task metrics, ``history`` the
    # rows of the earlier steps (resumed ones included). The returned metrics join the
    # row; a ``stop`` reason ends the loop after this step without checkpointing it (see
    # :class:`EarlyStop`). Rank 0's answer is the one every rank follows.


@dataclass(frozen=True)
class StepCheck:
    """What a task's optional ``after_step`` hook returns: extra metrics for the step's
    row, and a reason to stop the loop after this step (``None``: go on)."""

    metrics: dict[str, float] = field(default_factory=dict)
    stop: str | None = None


@dataclass(frozen=True)
class EarlyStop:
    """The loop ended before ``max_steps`` because the task asked it to.

    Attributes:
        step: the step after which the task asked to stop (its checkpoint is not written).
        reason: the task's message.
        last_good: the newest step checkpoint written before ``step`` (``None``: none
            was, the stage's starting weights are the last good ones).
    """

    step: int
    reason: str
    last_good: Path | None


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    metrics: dict[str, float]
    resumed_from: int | None = None
    #: one dict per optimiser step (all steps, resumed ones included): ``loss`` and
    #: the task's step-averaged metrics; restored from the step checkpoint on resume.
    history: list[dict[str, float]] = field(default_factory=list)
    #: set when the task's ``after_step`` stopped the loop early.
    stopped: EarlyStop | None = None


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier for optimiser step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    decay_steps = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    if cfg.schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def _autocast_dtype(cfg: TrainConfig, device: torch.device, run_dtype: str | None = None) -> torch.dtype | None:
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "auto":
        if (device.type == "cuda" and torch.cuda.is_bf16_supported()) or run_dtype == "bfloat16":
            return torch.bfloat16
        return None
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype is torch.float16:
        raise FtibError("train.precision: fp16 autocast needs CUDA; use bf16 or fp32 on the CPU")
    return dtype


def cast_master_weights(groups: Sequence[ParamGroup], dtype: torch.dtype) -> int:
    """Keep every trainable floating-point parameter in ``dtype`` (in place, through
    ``.data``: the Parameter objects, their hooks and group membership stay); returns
    how many were cast. Frozen parameters keep the dtype they were loaded in."""
    seen: set[int] = set()
    for g in groups:
        for p in g.params:
            if id(p) in seen or not p.is_floating_point() or p.dtype == dtype:
                continue
            seen.add(id(p))
            p.data = p.data.to(dtype)
    return len(seen)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA allocator memory on GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _rng_state() -> dict[str, Any]:
    """Every RNG stream as tensors and plain values, so that ``rng.pt`` loads with
    ``torch.load(weights_only=True)`` (no pickled ``numpy`` arrays or Python objects)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    try:
        import numpy as np

        # legacy=True (the default) returns the tuple form; the stub also allows a dict.
        legacy = np.random.get_state()
        assert isinstance(legacy, tuple)
        key, keys, pos, has_gauss, cached = legacy
        state["numpy"] = {"key": str(key), "state": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


CHECKSUMS = "checksums.json"


def _checksums(step_dir: Path) -> dict[str, str]:
    """SHA-256 of every file under a step checkpoint (``dcp/`` shards included), by
    relative path; the manifest of :data:`CHECKSUMS` itself is not listed."""
    return {f.relative_to(step_dir).as_posix(): sha256_path(f)
            for f in sorted(step_dir.rglob("*")) if f.is_file() and f.name != CHECKSUMS}


def verify_step_checkpoint(step_dir: Path) -> str | None:
    """Why the step checkpoint ``step_dir`` cannot be trusted to be intact, or ``None``.

    Compares every file with the checksum written beside it (``checksums.json``, the
    last file a step writes). A checksum detects truncation and bit rot, not tampering:
    whoever can rewrite a file can rewrite its checksum, which is why every file is
    also loaded without executing code (see :func:`safe_load`).
    """
    step_dir = Path(step_dir)
    listed = step_dir / CHECKSUMS
    try:
        expected = json.loads(listed.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{listed} is missing (the step was not finished)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{listed} is unreadable ({exc})"
    if not isinstance(expected, dict) or not all(isinstance(v, str) for v in expected.values()):
        return f"{listed} is not a mapping of file names to SHA-256 digests"
    for name, digest in expected.items():
        f = step_dir / name
        if not f.is_file():
            return f"{f} is missing"
        if sha256_path(f) != digest:
            return f"{f} does not match its checksum in {CHECKSUMS} (truncated or altered)"
    extra = sorted(set(_checksums(step_dir)) - set(expected))
    if extra:
        return f"{step_dir / extra[0]} is not listed in {CHECKSUMS}"
    return None


def safe_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, containers and plain
    values only, never code (torch's restricted unpickler). Any failure - a planted
    pickle, a truncated file - is a :class:`RunDirError` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure of an untrusted file is the file's
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunDirError(f"{path}: cannot be loaded as a plain tensor file ({type(exc).__name__}: {first}); "
                          "the step checkpoint is damaged or was not written by ftib") from exc


class _DataCursor:
    """Seeded, resumable micro-batch order: a permutation per epoch, sliced in order."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, offset: int = 0):
        if n == 0:
            raise FtibError("the training dataset is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.offset = epoch, offset
        self._perm: list[int] | None = None

    def _permutation(self) -> list[int]:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
        return self._perm

    def next_indices(self) -> list[int]:
        if self.offset >= self.n:
            self.epoch, self.offset, self._perm = self.epoch + 1, 0, None
        idx = self._permutation()[self.offset : self.offset + self.batch_size]
        self.offset += len(idx)
        return idx

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}


@dataclass
class StepResult:
    """What one optimiser step measured: on this rank, or over all ranks once
    :meth:`Trainer._reduce` has run (sums of loss/tokens/samples, means of the rest).

    ``loss`` is the step's loss (sum over micro-batches of loss / global loss tokens);
    ``metrics`` the task's per-step metrics, averaged over micro-batches; the ``*_s``
    fields are wall-clock seconds of each phase (``step_s`` the whole step on this rank).
    """

    loss: float = 0.0
    tokens: int = 0
    samples: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    grad_norm: float = 0.0
    lr: float = 0.0
    data_s: float = 0.0
    forward_s: float = 0.0
    backward_s: float = 0.0
    optimizer_s: float = 0.0
    step_s: float = 0.0


@dataclass
class _RunState:
    """The training loop's running state; ``losses``, ``history``, ``totals`` and
    ``cursor`` travel in every step checkpoint, so that what the stage reports at the
    end does not depend on interruptions."""

    cursor: _DataCursor
    start: int = 0
    resumed_from: int | None = None
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=lambda: {"tokens": 0, "samples": 0, "seconds": 0.0})
    last_good: Path | None = None
    stopped: EarlyStop | None = None

    def record(self, res: StepResult) -> None:
        self.losses.append(res.loss)
        self.history.append({"loss": res.loss, **res.metrics})
        self.totals["tokens"] += res.tokens
        self.totals["samples"] += res.samples
        self.totals["seconds"] += res.step_s


class Trainer:
    """Runs ``cfg.max_steps`` optimiser steps of ``task`` in ``ctx.work_dir``.

    Args:
        task: what to train (see :class:`TrainTask`).
        cfg: the loop's settings.
        ctx: the stage's run context (device, seed, metrics, resume point, and
            ``ctx.dist``: with ``world_size > 1`` the process group is initialised here
            if the caller has not done so).
        progress: show a progress bar (``None``: as ``ctx.progress``, i.e. ``ftib run
            --no-progress`` turns it off).

    Step checkpoints carry ``ctx.run_id``; resuming from one written under another id
    (another run, another stage, another configuration) is refused.
    """

    def __init__(self, task: TrainTask, cfg: TrainConfig, ctx: RunContext, *, progress: bool | None = None) -> None:
        self.task, self.cfg, self.ctx, self.run_key = task, cfg, ctx, ctx.run_id
        self.progress = ctx.progress if progress is None else progress
        self.device = ctx.torch_device()
        self.autocast_dtype = _autocast_dtype(cfg, self.device, getattr(ctx, "dtype", None))
        self.steps_dir = ctx.work_dir / "steps"
        self.world, self.rank = ctx.dist.world_size, ctx.dist.rank
        self.mode = self._distributed_mode()

        groups = task.param_groups()
        trainable = {id(p) for g in groups for p in g.params}
        if not trainable:
            raise FtibError("the stage selected no trainable parameters")
        stray = [n for n, p in task.model.named_parameters() if p.requires_grad and id(p) not in trainable]
        if stray:
            raise FtibError(f"parameters require grad but are in no group: {stray[:5]}")
        cast = cast_master_weights(groups, getattr(torch, cfg.master_weights))
        if cast:
            log.info("master weights: %d trainable tensors cast to %s", cast, cfg.master_weights)
        names = {id(p): n for n, p in task.model.named_parameters()}
        group_names = [[names[id(p)] for p in g.params] for g in groups]
        for g in groups:
            for p, _ in g.fixed_rows:
                if all(p is not q for q in g.params):
                    raise FtibError(f"parameter group {g.name!r}: fixed_rows names a parameter not in the group")
        fixed = [(names[id(p)], rows) for g in groups for p, rows in g.fixed_rows]
        if self.mode != "none":
            D.seed_rank(ctx.seed, self.rank)
            D.broadcast_parameters(p for n, p in task.model.named_parameters() if id(p) in trainable)
        if self.mode == "fsdp2":
            self._shard(task, trainable)
        # fully_shard replaces parameters by sharded ones: look them up again by name.
        params = dict(task.model.named_parameters())
        self.named_trainable = {n: params[n] for gn in group_names for n in gn}
        self.fixed_rows = [(params[n], rows) for n, rows in fixed]
        self.optimizer = torch.optim.AdamW(
            [
                {
                    "params": [params[n] for n in gn],
                    "lr": cfg.lr * g.lr_scale,
                    "weight_decay": cfg.weight_decay if g.weight_decay is None else g.weight_decay,
                    "name": g.name,
                }
                for g, gn in zip(groups, group_names)
                if gn
            ],
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, cfg)
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast_dtype is torch.float16 else None
        if cfg.gradient_checkpointing:
            enable = getattr(task.model, "gradient_checkpointing_enable", None)
            if enable is None:
                raise FtibError(
                    f"train.gradient_checkpointing: {type(task.model).__name__} does not support it"
                )
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.tb = self._tensorboard() if cfg.tensorboard and ctx.dist.is_main else None

    # -- distributed -----------------------------------------------------------------
    def _distributed_mode(self) -> str:
        cfg, ctx = self.cfg, self.ctx
        if self.world <= 1:
            if cfg.distributed != "none":
                log.info("train.distributed=%s with a single process: training unsharded", cfg.distributed)
            return "none"
        if cfg.distributed == "none":
            raise FtibError(
                f"this process is rank {self.rank} of {self.world} (torchrun) but train.distributed "
                f"is 'none'; set train.distributed to ddp or fsdp2, or launch one process"
            )
        D.setup(ctx.dist, ctx.device)
        if D.world_size() != self.world:
            raise FtibError(f"the process group has {D.world_size()} ranks but WORLD_SIZE is {self.world}")
        return cfg.distributed

    def _shard(self, task: TrainTask, trainable: set[int]) -> None:
        if not getattr(task, "supports_fsdp2", True):
            raise FtibError(
                f"train.distributed: fsdp2 is not supported by {type(task).__name__} (its loss does not "
                f"run the model through model(...)); use ddp"
            )
        hooked = [n for n, p in task.model.named_parameters()
                  if id(p) in trainable and getattr(p, "_backward_hooks", None)]
        if hooked:
            raise FtibError(
                f"train.distributed: fsdp2 cannot shard {hooked[:3]}: they carry gradient hooks that "
                f"act on whole tensors (to keep embedding rows fixed use ParamGroup.fixed_rows); use ddp"
            )
        units = D.shard_model(task.model, self.device, param_dtype=self.autocast_dtype)
        log.info("fsdp2: %d block units + root over %d ranks", len(units), self.world)

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise FtibError(
                "train.tensorboard: true needs the tensorboard package (pip install tensorboard)"
            ) from exc
        return SummaryWriter(str(self.ctx.work_dir / "tb"))

    # -- checkpoints -------------------------------------------------------------------
    def _save_step(self, step: int, cursor: _DataCursor, losses: list[float], history: list[dict[str, float]],
                   totals: dict[str, float]) -> Path:
        final = self.steps_dir / STEP_DIR_FORMAT.format(step)
        main = self.ctx.dist.is_main
        with contextlib.ExitStack() as stack:
            d = stack.enter_context(atomic_dir(final)) if main else None
            if self.mode != "none":
                d = Path(D.broadcast_object(str(d) if d is not None else None))
                torch.save(_rng_state(), d / f"rng-rank{self.rank}.pt")
                if self.mode == "fsdp2":
                    import torch.distributed.checkpoint as dcp

                    dcp.save(self._dcp_state(), checkpoint_id=d / "dcp")
                D.barrier()
            if main:
                assert d is not None  # the main rank entered atomic_dir above
                if self.mode != "fsdp2":
                    torch.save({n: p.detach().cpu() for n, p in self.named_trainable.items()}, d / "trainable.pt")
                    torch.save(self.optimizer.state_dict(), d / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), d / "scheduler.pt")
                if self.scaler is not None:
                    torch.save(self.scaler.state_dict(), d / "scaler.pt")
                torch.save(_rng_state(), d / "rng.pt")
                atomic_write_json(d / "trainer_state.json", {
                    "run_key": self.run_key,
                    "step": step,
                    "data": cursor.state(),
                    "losses": losses,
                    "history": history,
                    "totals": totals,
                    "world_size": self.world,
                    "distributed": self.mode,
                    "global_batch": self.cfg.batch_size * self.cfg.grad_accum * self.world,
                    "config": json.loads(json.dumps(dataclasses.asdict(self.cfg))),
                })
                # Last: a step without its checksums is an unfinished one.
                atomic_write_json(d / CHECKSUMS, _checksums(d))
        if main:
            self._prune()
        D.barrier()
        return final

    def _dcp_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return {"model": {n: p.detach() for n, p in self.named_trainable.items()},
                "optim": get_optimizer_state_dict(self.task.model, self.optimizer)}

    def _prune(self) -> None:
        done = sorted(d for d in self.steps_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        for old in done[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old)

    def _load_step(self, path: Path) -> dict[str, Any]:
        if not (path / CHECKSUMS).exists():
            log.warning("step checkpoint %s has no %s (written by an older ftib): resuming unverified",
                        path, CHECKSUMS)
        problem = verify_step_checkpoint(path) if (path / CHECKSUMS).exists() else None
        if problem is not None:
            raise RunDirError(f"step checkpoint {path} is damaged: {problem}")
        state_file = path / "trainer_state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{state_file}: step checkpoint {path} is unreadable ({exc}); delete it to restart the stage") from exc
        if not isinstance(state, dict) or not {"step", "data", "losses"} <= set(state):
            raise RunDirError(f"{state_file}: lacks step, data or losses; not an ftib step checkpoint")
        if state.get("run_key") != self.run_key:
            raise RunDirError(
                f"step checkpoint {path} was written by another run or stage "
                f"(key {state.get('run_key')!r}, expected {self.run_key!r}); refusing to resume from it"
            )
        if (path / "dcp").is_dir():
            self._load_dcp(path / "dcp")
        else:
            if self.mode == "fsdp2":
                raise RunDirError(
                    f"step checkpoint {path} holds full (ddp/single-process) tensors; resuming it under "
                    f"fsdp2 is not supported: resume with train.distributed: ddp"
                )
            self.load_trainable(path)
            self._apply(path / "optimizer.pt", self.optimizer.load_state_dict)
        self._apply(path / "scheduler.pt", self.scheduler.load_state_dict)
        if self.scaler is not None and (path / "scaler.pt").exists():
            self._apply(path / "scaler.pt", self.scaler.load_state_dict)
        saved_world = int(state.get("world_size", 1))
        own = path / f"rng-rank{self.rank}.pt"
        if saved_world == self.world and own.exists():
            self._apply(own, _set_rng_state)
        elif self.rank == 0:
            self._apply(path / "rng.pt", _set_rng_state)
        else:  # a rank the checkpoint did not have: a fresh stream of its own
            D.seed_rank(self.ctx.seed + int(state["step"]) + 1, self.rank)
        global_batch = self.cfg.batch_size * self.cfg.grad_accum * self.world
        if "global_batch" in state and state["global_batch"] != global_batch:
            log.warning("resuming with a global batch of %d samples; the checkpoint was trained with %d "
                        "(world size %d -> %d)", global_batch, state["global_batch"], saved_world, self.world)
        return state

    @staticmethod
    def _apply(path: Path, load: Any) -> None:
        """Load ``path`` safely and hand it to ``load``; a state of the wrong shape (a
        file from another optimiser, a damaged mapping) is an error naming the file."""
        value = safe_load(path)
        try:
            load(value)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise RunDirError(f"{path}: does not hold the state this run expects ({type(exc).__name__}: {exc})") from exc

    def _load_dcp(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        check_dcp_metadata(path)
        state = self._dcp_state()
        missing = set(self.named_trainable) - {k.split(".", 1)[1] for k in _dcp_keys(path) if k.startswith("model.")}
        if missing:
            raise RunDirError(f"step checkpoint {path.parent} lacks parameters {sorted(missing)[:5]}")
        dcp.load(state, checkpoint_id=path)
        set_optimizer_state_dict(self.task.model, self.optimizer, optim_state_dict=state["optim"])

    # -- the loop ------------------------------------------------------------------
    def _sync(self) -> None:
        # Phase timings need the GPU's queue drained; on the CPU this is free.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self):
        """The training autocast context (a no-op in fp32): rollouts, reference
        log-probs, losses and the ``after_step`` hook all run under it."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.autocast_dtype is not None)

    def _micro_batches(self, samples: Sequence[Any], cursor: _DataCursor) -> list[tuple[Any, bool]]:
        """This rank's ``grad_accum`` micro-batches, each with whether it is real.

        A rank whose slice of the short last micro-batch of an epoch is empty runs the
        first sample of the global micro-batch with weight 0, so that every rank runs
        the same forward/backward collectives (FSDP2) and contributes nothing.
        """
        out = []
        for _ in range(self.cfg.grad_accum):
            idx = cursor.next_indices()
            if self.mode != "none":
                mine = D.shard_slice(idx, self.rank, self.world)
                if not mine:
                    out.append((self.task.collate([samples[idx[0]]]), False))
                    continue
                idx = mine
            out.append((self.task.collate([samples[i] for i in idx]), True))
        return out

    def train(self) -> TrainResult:
        """Run the steps from the resume point (or 0) to ``cfg.max_steps``.

        Phases, top to bottom: :meth:`_start` (resume state, progress bar), then per step
        :meth:`_step` (data, forward/backward, gradients, optimiser), :meth:`_record`
        (the run's loss history and totals), :meth:`_log_step` (metrics row, progress
        bar) and :meth:`_checkpoint_due` / :meth:`_save_step`; finally :meth:`_summary`.
        """
        cfg, task = self.cfg, self.task
        samples = task.train_samples()
        run = self._start(len(samples))
        task.model.train()
        bar = None
        if self.progress and self.ctx.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=run.start, desc="train", unit="step", dynamic_ncols=True)
        params = list(self.named_trainable.values())
        try:
            for step in range(run.start, cfg.max_steps):
                res = self._step(step, samples, run, params)
                check = self._after_step(step, res, run.history)
                run.record(res)
                self._log_step(step, res, bar)
                if check.stop is not None:
                    run.stopped = EarlyStop(step=step, reason=check.stop, last_good=run.last_good)
                    log.warning("stopping after step %d: %s", step, check.stop)
                    break
                if self._checkpoint_due(step):
                    run.last_good = self._save_step(step, run.cursor, run.losses, run.history, run.totals)
        finally:
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
        return self._summary(run)

    def _after_step(self, step: int, res: StepResult, history: list[dict[str, float]]) -> StepCheck:
        """The task's ``after_step`` verdict on this step (rank 0's on every rank); its
        metrics are merged into ``res.metrics``."""
        hook = getattr(self.task, "after_step", None)
        if hook is None:
            return StepCheck()
        with self.autocast():
            check = hook(step, dict(res.metrics), history)
        if self.mode != "none":
            check = D.broadcast_object(check)
        res.metrics.update(check.metrics)
        return check

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the trainable parameters (what a step checkpoint's
        ``trainable.pt`` holds), e.g. to return to the starting weights later."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.named_trainable.items()}

    def load_trainable(self, source: Path | dict[str, torch.Tensor]) -> None:
        """Set the trainable parameters from a step checkpoint directory (its
        ``trainable.pt``, loaded safely) or from a :meth:`trainable_state` mapping; the
        optimiser state is left alone (for ending a stage at earlier weights)."""
        if isinstance(source, dict):
            weights, where = source, "the saved trainable state"
        else:
            path = Path(source)
            if (path / "dcp").is_dir():
                raise RunDirError(f"{path}: an fsdp2 step checkpoint; load_trainable reads trainable.pt only")
            weights, where = safe_load(path / "trainable.pt"), str(path / "trainable.pt")
        if not isinstance(weights, dict):
            raise RunDirError(f"{where}: expected a mapping of parameter names to tensors")
        missing = set(self.named_trainable) - set(weights)
        if missing:
            raise RunDirError(f"{where} lacks parameters {sorted(missing)[:5]}")
        with torch.no_grad():
            for n, p in self.named_trainable.items():
                p.copy_(weights[n].to(p.device))

    def _start(self, n_samples: int) -> _RunState:
        """The loop's state at its first step: fresh, or restored from ``ctx.resume_from``."""
        cfg, ctx = self.cfg, self.ctx
        per_step = cfg.batch_size * self.world  # one micro-batch position over all ranks
        run = _RunState(cursor=_DataCursor(n_samples, per_step, ctx.seed))
        if ctx.resume_from is not None:
            state = self._load_step(Path(ctx.resume_from))
            last = int(state["step"])
            run.losses = list(state["losses"])
            run.cursor = _DataCursor(n_samples, per_step, ctx.seed, **state["data"])
            run.history = list(state.get("history", []))
            run.totals.update(state.get("totals", {}))
            run.start, run.resumed_from = last + 1, last
            log.info("resuming at step %d of %d from %s", run.start, cfg.max_steps, ctx.resume_from)
        run.last_good = Path(ctx.resume_from) if ctx.resume_from else None
        return run

    def _step(self, step: int, samples: Sequence[Any], run: _RunState,
              params: list[torch.nn.Parameter]) -> StepResult:
        """One optimiser step: micro-batches, forward/backward over them, gradient
        reduction and clipping, the divergence check, the optimiser and scheduler."""
        t0 = time.perf_counter()
        # Under the training autocast too: a task whose batches come from the model
        # (GRPO's rollouts, reference log-probs) computes them in the training dtype.
        with self.autocast():
            batches = self._micro_batches(samples, run.cursor)
        t_data = time.perf_counter() - t0
        res = self._forward_backward(step, batches)
        # What the task's collate spent on phases it times itself (GRPO: generation,
        # rewards, reference log-probs) is not data time: each is reported on its own.
        inside = sum(res.metrics.get(k, 0.0) for k in getattr(self.task, "collate_times", ()))
        res.data_s = max(0.0, t_data - inside)
        t4 = time.perf_counter()
        if self.mode == "ddp":
            D.all_reduce_gradients(params)
        zero_fixed_rows(self.fixed_rows)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm is not None else float("inf")
        if self.mode == "none":
            res.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        else:
            res.grad_norm = D.clip_grad_norm(params, max_norm)
            res = self._reduce(res)
        self._check_finite(step, res, run.last_good)
        res.lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        t_end = time.perf_counter()
        res.optimizer_s = t_end - t4
        res.step_s = t_end - t0
        return res

    def _forward_backward(self, step: int, batches: list[tuple[Any, bool]]) -> StepResult:
        """Forward and backward over this rank's micro-batches, each loss divided by the
        step's global loss-token count, so the gradients sum to that of the mean loss."""
        task = self.task
        total = sum(int(task.loss_normaliser(b)) for b, real in batches if real)
        if self.mode != "none":
            total = int(D.all_reduce_sum(total, self.device))
        if total <= 0:
            raise FtibError(f"step {step}: the micro-batches hold no loss tokens")
        res = StepResult()
        for i, (b, real) in enumerate(batches):
            if self.mode == "fsdp2":
                # Reduce-scatter once per step, after the last micro-batch.
                # The model was wrapped by D.shard_model (fully_shard) in __init__.
                cast("FSDPModule", task.model).set_requires_gradient_sync(i == len(batches) - 1)
            t1 = time.perf_counter()
            with self.autocast():
                out = task.compute_loss(b)
            scaled = out.loss.float() / total
            if not real:
                scaled = scaled * 0.0
            # DDP/FSDP average gradients over ranks; scale back up to a global sum.
            backprop = scaled * self.world if self.mode != "none" else scaled
            self._sync()
            t2 = time.perf_counter()
            if self.scaler is not None:
                self.scaler.scale(backprop).backward()
            else:
                backprop.backward()
            self._sync()
            t3 = time.perf_counter()
            res.forward_s, res.backward_s = res.forward_s + (t2 - t1), res.backward_s + (t3 - t2)
            res.loss += float(scaled.detach())
            if real:
                res.tokens += out.tokens
                res.samples += out.samples
            for k, v in out.metrics.items():
                # Seconds (``time/*``) add up to the step's; other metrics are step means.
                share = 1.0 if k.startswith("time/") else 1.0 / self.cfg.grad_accum
                res.metrics[k] = res.metrics.get(k, 0.0) + float(v) * share
        return res

    def _check_finite(self, step: int, res: StepResult, last_good: Path | None) -> None:
        """Raise :class:`TrainingDiverged` on a non-finite loss, or a non-finite gradient
        norm without a loss scaler (the scaler skips such steps itself)."""
        if not math.isfinite(res.loss) or (self.scaler is None and not math.isfinite(res.grad_norm)):
            where = f"last good checkpoint: {last_good}" if last_good else "no step checkpoint was written yet"
            raise TrainingDiverged(
                f"non-finite {'loss' if not math.isfinite(res.loss) else 'gradient norm'} at step "
                f"{step} (loss={res.loss}, grad_norm={res.grad_norm}); stopping ({where}). "
                f"Lower train.lr or set train.max_grad_norm."
            )

    def _log_step(self, step: int, res: StepResult, bar: Any) -> None:
        """Every ``log_every`` steps and at the last: a metrics row (rank 0) and
        TensorBoard scalars; every step: the progress bar."""
        cfg, ctx = self.cfg, self.ctx
        if step % cfg.log_every == 0 or step == cfg.max_steps - 1:
            peak = peak_memory_bytes(self.device)
            if self.mode != "none":
                peak = max(D.all_gather_object(peak))
            dt = res.step_s
            row = {"loss": res.loss, "lr": res.lr, "grad_norm": res.grad_norm,
                   "tokens_per_s": res.tokens / dt, "samples_per_s": res.samples / dt,
                   "step_time_s": dt, "data_time_s": res.data_s,
                   "time/forward_s": res.forward_s, "time/backward_s": res.backward_s,
                   "time/optimizer_s": res.optimizer_s,
                   "peak_mem_bytes": peak, **res.metrics}
            if self.world > 1:
                row["world_size"] = self.world
            if ctx.dist.is_main:
                ctx.metrics.log(step, row)
            if self.tb is not None:
                for k, v in row.items():
                    self.tb.add_scalar(k, v, step)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.4f}", lr=f"{res.lr:.2e}")

    def _checkpoint_due(self, step: int) -> bool:
        """A step checkpoint after the last step and every ``checkpoint_every`` steps."""
        cfg = self.cfg
        is_last = step == cfg.max_steps - 1
        return is_last or bool(cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0)

    def _summary(self, run: _RunState) -> TrainResult:
        """The stage's result: loss summary, throughput over the whole run (resumed
        steps included), memory and parameter counts."""
        cfg, losses, totals = self.cfg, run.losses, run.totals
        n = len(losses)
        tail = max(1, n // 10)
        metrics = {
            "final_loss": losses[-1],
            "first_loss": losses[0],
            "loss_first_10pct": sum(losses[:tail]) / tail,
            "loss_last_10pct": sum(losses[-tail:]) / tail,
            "steps": float(cfg.max_steps if run.stopped is None else run.stopped.step + 1),
        }
        if totals["seconds"] > 0:
            metrics["tokens_per_s"] = totals["tokens"] / totals["seconds"]
            metrics["samples_per_s"] = totals["samples"] / totals["seconds"]
        metrics["peak_mem_bytes"] = float(peak_memory_bytes(self.device))
        # Global counts (a DTensor's numel is its full size): for FLOP estimates.
        metrics["model_params"] = float(sum(p.numel() for p in self.task.model.parameters()))
        metrics["trainable_params"] = float(sum(p.numel() for p in self.named_trainable.values()))
        if self.world > 1:
            metrics["world_size"] = float(self.world)
        return TrainResult(steps=int(metrics["steps"]), losses=losses, metrics=metrics,
                           resumed_from=run.resumed_from, history=run.history, stopped=run.stopped)

    def _reduce(self, res: StepResult) -> StepResult:
        """Sum loss/tokens/samples over ranks; average task metrics and the data,
        forward and backward times. Collective; ``grad_norm`` is already global."""
        times = (res.data_s, res.forward_s, res.backward_s)
        rows = D.all_gather_object((res.loss, res.tokens, res.samples, res.metrics, times))
        n = len(rows)
        keys = sorted({k for r in rows for k in r[3]})
        mean_times = [sum(r[4][i] for r in rows) / n for i in range(len(times))]
        # Sum in rank order so that every rank gets the identical float.
        return dataclasses.replace(
            res,
            loss=math.fsum(r[0] for r in rows),
            tokens=sum(r[1] for r in rows),
            samples=sum(r[2] for r in rows),
            metrics={k: sum(r[3].get(k, 0.0) for r in rows) / n for k in keys},
            data_s=mean_times[0], forward_s=mean_times[1], backward_s=mean_times[2],
        )

    def save_final(self, name: str = "final") -> Path:
        """Write the model (``task.save_model``) atomically to ``work_dir/name`` (rank 0).

        Under FSDP2 the parameters are first gathered to full tensors on every rank
        (collective), so the directory is a plain transformers checkpoint; the model is
        not trained further through FSDP after this call.
        """
        final = self.ctx.work_dir / name
        if self.mode == "fsdp2":
            D.unshard_in_place(self.task.model)
        if self.ctx.dist.is_main:
            with atomic_dir(final) as d:
                self.task.save_model(d)
        D.barrier()
        return final


# What a DCP ``.metadata`` file may name. torch reads it with plain ``pickle.load``
# (torch/distributed/checkpoint/filesystem.py, ``read_metadata``), which runs whatever a
# crafted file asks for, so ftib first unpickles it with this allow-list and refuses
# anything else; torch's own load then sees only these harmless constructors.
_DCP_ALLOWED = {
    "torch.distributed.checkpoint.metadata": None,  # any name: the metadata dataclasses and enums
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


def check_dcp_metadata(dcp_dir: Path) -> None:
    """Refuse a DCP checkpoint whose ``.metadata`` pickle names anything outside
    :data:`_DCP_ALLOWED` (plus ``torch`` dtypes): :class:`RunDirError` naming the file."""
    import io
    import pickle

    path = Path(dcp_dir) / ".metadata"

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            allowed = _DCP_ALLOWED.get(module, set())
            ok = allowed is None or name in allowed
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                ok = True
            if not ok:
                raise pickle.UnpicklingError(f"{module}.{name} is not allowed in DCP metadata")
            return super().find_class(module, name)

    try:
        _Restricted(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # noqa: BLE001 - any failure of an untrusted file is the file's
        raise RunDirError(f"{path}: refused ({type(exc).__name__}: {exc}); only DCP metadata "
                          "classes may appear in it") from exc


def _dcp_keys(path: Path) -> set[str]:
    import torch.distributed.checkpoint as dcp

    check_dcp_metadata(path)
    return set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def consolidate_checkpoint(step_dir: Path, out_file: Path | None = None) -> Path:
    """Write an FSDP2 step checkpoint (``step_dir/dcp``) as one ``torch.save`` file of full
    tensors (``{"model": {name: tensor}, "optim": ...}``); no process group needed."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    step_dir = Path(step_dir)
    if not (step_dir / "dcp").is_dir():
        raise RunDirError(f"{step_dir} is not an FSDP2 step checkpoint (no dcp/ folder)")
    out = Path(out_file) if out_file else step_dir / "consolidated.pt"
    check_dcp_metadata(step_dir / "dcp")
    dcp_to_torch_save(step_dir / "dcp", out)
    return out
