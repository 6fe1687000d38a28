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
uninterrupted one would, and on CPU produces the same losses bit for bit.
"""

from __future__ import annotations

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
from typing import Any, Literal, Protocol

import torch

from ftib.core.errors import FtibError, RunDirError
from ftib.core.interfaces import RunContext
from ftib.core.rundir import atomic_dir, atomic_write_json

log = logging.getLogger("ftib.train")

STEP_DIR_FORMAT = "step-{:06d}"


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
        precision: ``auto`` = bf16 autocast on CUDA where supported, else fp32.
        gradient_checkpointing: recompute activations in backward (HF models).
        checkpoint_every: write a step checkpoint every N steps (0 = only the last).
        keep_checkpoints: how many step checkpoints to keep.
        log_every: log metrics every N steps.
        tensorboard: also write TensorBoard events under ``work_dir/tb``.
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


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    metrics: dict[str, float]
    resumed_from: int | None = None


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


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype is torch.float16:
        raise FtibError("train.precision: fp16 autocast needs CUDA; use bf16 or fp32 on the CPU")
    return dtype


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA allocator memory on GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


class Trainer:
    """Runs ``cfg.max_steps`` optimiser steps of ``task`` in ``ctx.work_dir``.

    Args:
        task: what to train (see :class:`TrainTask`).
        cfg: the loop's settings.
        ctx: the stage's run context (device, seed, metrics, resume point).
        progress: show a progress bar.

    Step checkpoints carry ``ctx.run_id``; resuming from one written under another id
    (another run, another stage, another configuration) is refused.
    """

    def __init__(self, task: TrainTask, cfg: TrainConfig, ctx: RunContext, *, progress: bool = True) -> None:
        self.task, self.cfg, self.ctx, self.run_key = task, cfg, ctx, ctx.run_id
        self.progress = progress
        self.device = ctx.torch_device()
        self.autocast_dtype = _autocast_dtype(cfg, self.device)
        self.steps_dir = ctx.work_dir / "steps"

        groups = task.param_groups()
        trainable = {id(p) for g in groups for p in g.params}
        if not trainable:
            raise FtibError("the stage selected no trainable parameters")
        self.named_trainable = {
            n: p for n, p in task.model.named_parameters() if id(p) in trainable
        }
        stray = [n for n, p in task.model.named_parameters() if p.requires_grad and id(p) not in trainable]
        if stray:
            raise FtibError(f"parameters require grad but are in no group: {stray[:5]}")
        self.optimizer = torch.optim.AdamW(
            [
                {
                    "params": g.params,
                    "lr": cfg.lr * g.lr_scale,
                    "weight_decay": cfg.weight_decay if g.weight_decay is None else g.weight_decay,
                    "name": g.name,
                }
                for g in groups
                if g.params
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

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise FtibError(
                "train.tensorboard: true needs the tensorboard package (pip install tensorboard)"
            ) from exc
        return SummaryWriter(str(self.ctx.work_dir / "tb"))

    # -- checkpoints -------------------------------------------------------------------
    def _save_step(self, step: int, cursor: _DataCursor, losses: list[float]) -> Path:
        final = self.steps_dir / STEP_DIR_FORMAT.format(step)
        with atomic_dir(final) as d:
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
                "config": json.loads(json.dumps(dataclasses.asdict(self.cfg))),
            })
        self._prune()
        return final

    def _prune(self) -> None:
        done = sorted(d for d in self.steps_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
        for old in done[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old)

    def _load_step(self, path: Path) -> tuple[int, dict[str, int], list[float]]:
        state_file = path / "trainer_state.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"step checkpoint {path} is unreadable ({exc}); delete it to restart the stage") from exc
        if state.get("run_key") != self.run_key:
            raise RunDirError(
                f"step checkpoint {path} was written by another run or stage "
                f"(key {state.get('run_key')!r}, expected {self.run_key!r}); refusing to resume from it"
            )
        weights = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
        missing = set(self.named_trainable) - set(weights)
        if missing:
            raise RunDirError(f"step checkpoint {path} lacks parameters {sorted(missing)[:5]}")
        with torch.no_grad():
            for n, p in self.named_trainable.items():
                p.copy_(weights[n].to(p.device))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        if self.scaler is not None and (path / "scaler.pt").exists():
            self.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=False))
        _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
        return int(state["step"]), state["data"], list(state["losses"])

    # -- the loop ------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg, task, ctx = self.cfg, self.task, self.ctx
        samples = task.train_samples()
        cursor = _DataCursor(len(samples), cfg.batch_size, ctx.seed)
        start, losses, resumed = 0, [], None
        if ctx.resume_from is not None:
            last, data_pos, losses = self._load_step(Path(ctx.resume_from))
            cursor = _DataCursor(len(samples), cfg.batch_size, ctx.seed, **data_pos)
            start, resumed = last + 1, last
            log.info("resuming at step %d of %d from %s", start, cfg.max_steps, ctx.resume_from)
        task.model.train()
        bar = None
        if self.progress and ctx.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
        totals = {"tokens": 0, "samples": 0, "seconds": 0.0}
        last_good: Path | None = Path(ctx.resume_from) if ctx.resume_from else None
        try:
            for step in range(start, cfg.max_steps):
                t0 = time.perf_counter()
                batches = [task.collate([samples[i] for i in cursor.next_indices()]) for _ in range(cfg.grad_accum)]
                t_data = time.perf_counter() - t0
                total = sum(int(task.loss_normaliser(b)) for b in batches)
                if total <= 0:
                    raise FtibError(f"step {step}: the micro-batches hold no loss tokens")
                step_loss, tokens, nsamples, extra = 0.0, 0, 0, {}
                for b in batches:
                    with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                                        enabled=self.autocast_dtype is not None):
                        out = task.compute_loss(b)
                    scaled = out.loss.float() / total
                    if self.scaler is not None:
                        self.scaler.scale(scaled).backward()
                    else:
                        scaled.backward()
                    step_loss += float(scaled.detach())
                    tokens += out.tokens
                    nsamples += out.samples
                    for k, v in out.metrics.items():
                        extra[k] = extra.get(k, 0.0) + float(v) / cfg.grad_accum
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                params = list(self.named_trainable.values())
                max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                if not math.isfinite(step_loss) or (self.scaler is None and not math.isfinite(grad_norm)):
                    where = f"last good checkpoint: {last_good}" if last_good else "no step checkpoint was written yet"
                    raise TrainingDiverged(
                        f"non-finite {'loss' if not math.isfinite(step_loss) else 'gradient norm'} at step "
                        f"{step} (loss={step_loss}, grad_norm={grad_norm}); stopping ({where}). "
                        f"Lower train.lr or set train.max_grad_norm."
                    )
                lr = self.optimizer.param_groups[0]["lr"]
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                dt = time.perf_counter() - t0
                losses.append(step_loss)
                totals["tokens"] += tokens
                totals["samples"] += nsamples
                totals["seconds"] += dt
                if step % cfg.log_every == 0 or step == cfg.max_steps - 1:
                    row = {"loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                           "tokens_per_s": tokens / dt, "samples_per_s": nsamples / dt,
                           "step_time_s": dt, "data_time_s": t_data,
                           "peak_mem_bytes": peak_memory_bytes(self.device), **extra}
                    ctx.metrics.log(step, row)
                    if self.tb is not None:
                        for k, v in row.items():
                            self.tb.add_scalar(k, v, step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
                is_last = step == cfg.max_steps - 1
                if is_last or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
                    last_good = self._save_step(step, cursor, losses)
        finally:
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
        n = len(losses)
        tail = max(1, n // 10)
        metrics = {
            "final_loss": losses[-1],
            "first_loss": losses[0],
            "loss_first_10pct": sum(losses[:tail]) / tail,
            "loss_last_10pct": sum(losses[-tail:]) / tail,
            "steps": float(cfg.max_steps),
        }
        if totals["seconds"] > 0:
            metrics["tokens_per_s"] = totals["tokens"] / totals["seconds"]
            metrics["samples_per_s"] = totals["samples"] / totals["seconds"]
        metrics["peak_mem_bytes"] = float(peak_memory_bytes(self.device))
        return TrainResult(steps=cfg.max_steps, losses=losses, metrics=metrics, resumed_from=resumed)

    def save_final(self, name: str = "final") -> Path:
        """Write the model (``task.save_model``) atomically to ``work_dir/name``."""
        final = self.ctx.work_dir / name
        with atomic_dir(final) as d:
            self.task.save_model(d)
        return final
