"""Fused linear GRPO loss vs the eager full-logits loss vs Liger's LigerFusedLinearGRPOLoss.

Time of one step (mode ``full``: forward + backward; ``no_grad``: forward only) with
pytest-benchmark, and peak memory of one step measured in a fresh subprocess (peak RSS,
Linux VmHWM after resetting it; on CUDA torch.cuda.max_memory_allocated). On CPU the
subprocess first runs one step of the same implementation and mode on tiny inputs, so
one-time process costs are not counted as the step's memory (the first call of any
torch.library custom op imports torch._dynamo, ~72 MiB of RSS; MKL and Liger have their
own first-call initialisation). Two numbers per case, both in ``extra_info``:

- ``peak_extra_mib``: peak minus the memory with the inputs allocated;
- ``workspace_mib``: ``peak_extra_mib`` minus ``grads_mib``, the size of the gradients the
  step must return (dL/dW + dL/dhidden, float32 here: 602 MiB at V = 151,936, H = 1,024,
  tokens = 2,048), which is the same for every implementation. In ``no_grad`` mode
  ``grads_mib`` is 0 and the two numbers are equal.

    pytest bench/test_bench_grpo_loss.py --benchmark-only --benchmark-group-by=param:size,param:mode
    pytest bench/test_bench_grpo_loss.py --benchmark-only -m slow   # the large Qwen-vocabulary cases

Config of every case: 16 sequences (B*G), no padding, loss_type ``bnpo``, beta 0.04 with
reference log-probs (k3 KL without bias correction, as Liger), old log-probs
(num_iterations > 1), clip 0.2/0.28, float32, hidden
and lm_head both trainable. Liger runs eagerly on CPU (``compiled=False``: its
torch.compile path was 2-6x slower on this CPU) and compiled on CUDA.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ftib.bench._loss_bench import LossBench, can_import, loss_step
from ftib.kernels.grpo_loss import fused_linear_grpo_loss
from ftib.kernels.reference import grpo_loss as ref

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FUSED = "triton" if DEVICE.type == "cuda" else "torch"
SEQS = 16
# name -> (V, H, tokens). The first is a quick sanity size; the rest use Qwen's vocabulary.
SIZES = {
    "v32k-h512-t1024": (32768, 512, 1024),
    "v152k-h1024-t2048": (151936, 1024, 2048),
    "v152k-h2048-t2048": (151936, 2048, 2048),
    "v152k-h1024-t8192": (151936, 1024, 8192),
    "v152k-h2048-t8192": (151936, 2048, 8192),
}
SLOW = {"v152k-h2048-t2048", "v152k-h1024-t8192", "v152k-h2048-t8192"}
ROUNDS = {"v32k-h512-t1024": 5}
IMPLS = ["fused", "eager", "liger"]
# The KL without TRL's bias correction: the objective Liger's loss computes, so that the
# three implementations compute the same value.
CONFIG = dict(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, loss_type="bnpo", use_bias_correction_kl=False)


def make_inputs(size: str | tuple[int, int, int], dtype=torch.float32):
    V, H, tokens = SIZES[size] if isinstance(size, str) else size
    T = tokens // SEQS
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(SEQS, T, H, generator=g).to(dtype).to(DEVICE).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * H**-0.5).to(dtype).to(DEVICE).requires_grad_()
    ids = torch.randint(0, V, (SEQS, T), generator=g).to(DEVICE)
    mask = torch.ones(SEQS, T, device=DEVICE)
    adv = torch.randn(SEQS, generator=g).to(DEVICE)
    # Old/reference log-probs near log(1/V), the scale of a real policy's; their exact
    # values only change which branch of min/clip each token takes.
    base = -torch.log(torch.tensor(float(V)))
    old = (base + 0.3 * torch.randn(SEQS, T, generator=g)).to(DEVICE)
    ref_lp = (base + 0.5 * torch.randn(SEQS, T, generator=g)).to(DEVICE)
    return dict(hidden=hidden, weight=weight, ids=ids, mask=mask, adv=adv, old=old, ref=ref_lp)


def make_step(impl: str, x: dict, mode: str):
    """A zero-argument callable running one step; returns the loss."""
    args = (x["hidden"], x["weight"], x["ids"], x["mask"], x["adv"])
    if impl == "fused":
        def loss_fn():
            return fused_linear_grpo_loss(*args, old_logps=x["old"], ref_logps=x["ref"],
                                          impl=FUSED, **CONFIG).loss
    elif impl == "eager":
        def loss_fn():
            return ref.fused_linear_grpo_loss(*args, old_logps=x["old"], ref_logps=x["ref"], **CONFIG)[0]
    else:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        module = LigerFusedLinearGRPOLoss(
            beta=CONFIG["beta"], compiled=DEVICE.type == "cuda", use_ref_model=True, chunk_size=1,
            epsilon_low=CONFIG["epsilon_low"], epsilon_high=CONFIG["epsilon_high"],
            loss_type=CONFIG["loss_type"],
        )

        def loss_fn():
            return module(*args, ref_per_token_logps=x["ref"], old_per_token_logps=x["old"])[0]

    return loss_step(loss_fn, (x["hidden"], x["weight"]), mode, DEVICE)


BENCH = LossBench(script=Path(__file__), sizes=SIZES, slow=frozenset(SLOW), rounds=ROUNDS,
                  make_inputs=make_inputs, make_step=make_step, device=DEVICE, fused_impl=FUSED)


@BENCH.cases(IMPLS)
def test_grpo_loss(benchmark, impl, mode, size):
    # The three implementations agree on the first size before they are timed (bnpo, beta > 0).
    BENCH.run_case(benchmark, impl=impl, mode=mode, size=size, shapes={"seqs": SEQS}, config=CONFIG,
                   liger_ok=can_import("liger_kernel.chunked_loss", "LigerFusedLinearGRPOLoss"),
                   liger_reason="liger-kernel is not installed or does not import here")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--measure-memory":
    print(json.dumps(BENCH.measure_here(json.loads(sys.argv[2]))))
