"""Process groups and the rank-aware helpers of the shared loop.

``torchrun`` starts one process per device and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` turns that into an
initialised default process group (``nccl`` on CUDA, ``gloo`` on the CPU) and
:func:`teardown` destroys it. Every other helper here is a no-op (or the identity) when
no process group is initialised, so single-process code paths call them unconditionally.

Data parallelism in the loop (``train.distributed``):

* ``ddp`` — every rank holds the whole model; after the last micro-batch of a step the
  trainable gradients are averaged across ranks with one bucketed all-reduce
  (:func:`all_reduce_gradients`), the same arithmetic as ``DistributedDataParallel``
  with ``no_sync`` accumulation. The gradients are reduced outside a module wrapper
  because stages call their model in ways a wrapper cannot see (GRPO generates with
  it and runs its decoder and ``lm_head`` separately); the price is that communication
  does not overlap the backward pass.
* ``fsdp2`` — parameters, gradients and optimiser state are sharded with PyTorch's
  ``fully_shard`` (:func:`shard_model`): each transformer block that trains (the classes
  listed in the model's ``_no_split_modules``) is one unit, the root module another;
  frozen parameters outside those blocks stay replicated.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
import torch.distributed as dist

from ftib.core.errors import FtibError
from ftib.core.interfaces import DistInfo

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

log = logging.getLogger("ftib.distributed")


def env_dist_info() -> DistInfo:
    """This process's place in the job from torchrun's environment (rank 0 of 1 without it)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def backend_for(device: str | torch.device) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: str, info: DistInfo) -> str:
    """``cuda`` becomes ``cuda:<local_rank>`` in a multi-process job; others are unchanged."""
    if info.world_size > 1 and device == "cuda":
        return f"cuda:{info.local_rank}"
    return device


def setup(info: DistInfo, device: str, *, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group for a multi-process job.

    Returns True when this call created the group (the caller then owns
    :func:`teardown`), False when there is nothing to do (one process, or a group that
    already exists).
    """
    if info.world_size <= 1 or is_initialized():
        return False
    if not dist.is_available():
        raise FtibError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise FtibError(f"WORLD_SIZE={info.world_size} but {var} is not set; launch with torchrun")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev.index if dev.index is not None else info.local_rank)
    dist.init_process_group(
        backend=backend_for(dev), rank=info.rank, world_size=info.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    log.info("process group: rank %d of %d (%s)", info.rank, info.world_size, dist.get_backend())
    return True


def teardown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` holds it, on every rank (picklable objects)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(value: float | int, device: torch.device) -> float:
    """Sum of a scalar over ranks (float64 on the collective's device)."""
    if not is_initialized():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def _comm_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def shard_slice(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s contiguous share of one global micro-batch.

    The global micro-batch (``batch_size * world`` indices of the epoch's permutation)
    is cut into ``world`` contiguous pieces whose sizes differ by at most one, so rank
    ``r`` sees exactly the samples a single process would see as micro-batch ``r`` of an
    accumulation window. Only the last, short micro-batch of an epoch can leave a rank
    empty; the loop handles that (see ``Trainer``).
    """
    n = len(indices)
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return list(indices[start : start + base + (1 if rank < extra else 0)])


def broadcast_parameters(params: Iterable[torch.Tensor]) -> None:
    """Make every rank start from rank 0's values (as DDP does at construction)."""
    if not is_initialized():
        return
    with torch.no_grad():
        for p in params:
            dev = _comm_device(p.device)
            buf = p.detach().to(dev)
            dist.broadcast(buf, src=0)
            if buf is not p:
                p.copy_(buf.to(p.device))


def all_reduce_gradients(params: Sequence[torch.nn.Parameter], *, bucket_bytes: int = 25 << 20) -> None:
    """Average ``p.grad`` over ranks, in flat buckets of one dtype.

    A parameter without a gradient on this rank (unused in its micro-batches) takes part
    as zeros, so every rank issues the same collectives in the same order.
    """
    if not is_initialized():
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    buckets: list[list[torch.Tensor]] = []
    current: list[torch.Tensor] = []
    size = 0
    for p in params:
        g = p.grad
        assert g is not None  # every missing gradient was set to zeros above
        if current and (g.dtype != current[0].dtype or g.device != current[0].device or size >= bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(g)
        size += g.numel() * g.element_size()
    if current:
        buckets.append(current)
    for grads in buckets:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dev = _comm_device(flat.device)
        comm = flat.to(dev)
        dist.all_reduce(comm, op=dist.ReduceOp.SUM)
        comm.div_(world)
        flat = comm.to(flat.device)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def seed_rank(seed: int, rank_: int) -> None:
    """Give rank ``rank_`` > 0 its own RNG streams (dropout, sampling); rank 0 keeps the run's."""
    if rank_ == 0:
        return
    s = seed + 1_000_003 * rank_
    random.seed(s)
    torch.manual_seed(s)
    try:
        import numpy as np

        np.random.seed(s % (2**32))
    except ImportError:
        pass


# -- FSDP2 ---------------------------------------------------------------------------------
def _block_classes(model: torch.nn.Module) -> set[str]:
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def shard_model(model: torch.nn.Module, device: torch.device, *,
                param_dtype: torch.dtype | None = None) -> list[str]:
    """Apply ``fully_shard`` to each transformer block that trains, then to the root.

    Frozen parameters outside those blocks (a frozen vision tower, say) are left out of
    sharding (``ignored_params``): they stay replicated and need no collective, which
    matters because such modules may run on some ranks and not others (a micro-batch
    without images skips the vision tower). Every sharded unit must run on every rank
    in every micro-batch.

    Args:
        model: the model, already on ``device``; changed in place.
        device: this rank's device (sets the device mesh type).
        param_dtype: with bf16/fp16 training, all-gather and compute in this dtype
            (``MixedPrecisionPolicy``); gradients are reduced in float32.

    Returns:
        Names of the modules that became their own FSDP unit (the root is not listed).

    Raises:
        FtibError: no process group, or a parameter that cannot be sharded (already a
        DTensor, on the meta device, or not on ``device``).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not is_initialized():
        raise FtibError("train.distributed: fsdp2 needs an initialised process group (launch with torchrun)")
    for name, p in model.named_parameters():
        if is_dtensor(p):
            raise FtibError(f"train.distributed: fsdp2 cannot shard {name}: it is already a DTensor")
        if p.device.type == "meta":
            raise FtibError(f"train.distributed: fsdp2 cannot shard {name}: it is on the meta device")
        if p.device.type != device.type:
            raise FtibError(f"train.distributed: fsdp2 cannot shard {name}: it is on {p.device}, not {device}")
    if not any(p.requires_grad for p in model.parameters()):
        raise FtibError("train.distributed: fsdp2 has nothing to shard (no parameter requires grad)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kw: dict[str, Any] = {"mesh": mesh}
    if param_dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = _block_classes(model)
    units: list[str] = []
    in_units: set[int] = set()
    for name, m in model.named_modules():
        if not name or type(m).__name__ not in blocks or any(name.startswith(u + ".") for u in units):
            continue
        params = list(m.parameters())
        if any(p.requires_grad for p in params):
            units.append(name)
            in_units.update(id(p) for p in params)
    for name in units:
        fully_shard(model.get_submodule(name), **kw)
    ignored = {p for p in model.parameters() if not p.requires_grad and id(p) not in in_units}
    fully_shard(model, ignored_params=ignored or None, **kw)
    return units


def is_dtensor(t: torch.Tensor) -> TypeGuard[DTensor]:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def zero_grad_rows(grad: torch.Tensor, rows: slice | list[int]) -> None:
    """Zero ``rows`` (global indices along dim 0) of ``grad`` in place. A sharded
    (DTensor) gradient zeroes the rows its local shard holds, so every rank clears its
    part and no gather is needed."""
    n = grad.shape[0]
    wanted = range(n)[rows] if isinstance(rows, slice) else [r for r in rows if 0 <= r < n]
    if is_dtensor(grad):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(grad.shape, grad.device_mesh, grad.placements)
        local, lo, hi = grad.to_local(), offset[0], offset[0] + shape[0]
        wanted = [r - lo for r in wanted if lo <= r < hi]
        grad = local
    with torch.no_grad():
        if isinstance(wanted, range) and wanted.step == 1:
            grad[wanted.start : wanted.stop].zero_()
        elif len(wanted):
            grad.index_fill_(0, torch.tensor(list(wanted), device=grad.device), 0)


def clip_grad_norm(params: Sequence[torch.nn.Parameter], max_norm: float) -> float:
    """Global gradient norm (over all shards) and in-place clipping to ``max_norm``."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    if not any(is_dtensor(g) for g in grads):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    if is_dtensor(total):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def unshard_in_place(model: torch.nn.Module) -> None:
    """Replace every sharded (DTensor) parameter by its full tensor, on every rank.

    Collective. Used once at the end of FSDP2 training so that ``save_pretrained`` sees
    plain tensors; the model must not be trained through FSDP afterwards.
    """
    memo: dict[int, torch.nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or not is_dtensor(p):
                continue
            if id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(p.full_tensor().detach().clone(), requires_grad=p.requires_grad)
            module._parameters[name] = memo[id(p)]
