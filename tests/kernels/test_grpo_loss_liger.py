"""The fused GRPO loss against Liger-Kernel's ``LigerFusedLinearGRPOLoss`` (0.8.5) on
identical inputs: loss and the gradients of hidden, weight and bias, for the objectives
both define the same way (skipped where liger-kernel is not installed).

Not compared: ``luspo`` (Liger 0.8.5 keeps TRL's earlier formula, mean of l_it * n_i over
all B*T entries; TRL 1.16 sums l_it m_it per completion, which ftib follows) and
sequence-level ratios for cispo/sapo/vespo (Liger rejects them; TRL does not)."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_parity import assert_close

from ftib.kernels.grpo_loss import fused_linear_grpo_loss
from ftib.kernels.reference import grpo_loss as ref

liger = pytest.importorskip("liger_kernel.chunked_loss")
pytestmark = pytest.mark.filterwarnings("ignore:.*TRL warns too:UserWarning")

CASES = [
    pytest.param(lt, level, delta, bias_kl, id=f"{lt}-{level}-d{delta}-bkl{int(bias_kl)}")
    for lt in ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "vespo")
    for level in ("token", "sequence")
    if not (level == "sequence" and lt in ("cispo", "sapo", "vespo"))
    for delta in ((None, 1.4) if lt in ref.CLIPPED_LOSS_TYPES else (None,))
    for bias_kl in (True, False)
]


@pytest.mark.parametrize("loss_type, level, delta, bias_kl", CASES)
def test_matches_liger(loss_type, level, delta, bias_kl):
    B, T, H, V = 6, 7, 16, 53
    g = torch.Generator().manual_seed(len(loss_type) * 13 + (level == "sequence") + int(bias_kl) * 5)
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) / math.sqrt(H) * 2
    bias = torch.randn(V, generator=g) * 0.1
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    adv = torch.randn(B, generator=g)
    with torch.no_grad():
        logps, _ = ref.token_logps_and_entropy(hidden, weight, bias, ids, 0.9)
    old = logps - 0.3 * torch.randn(B, T, generator=g)
    ref_lp = logps + 0.5 * torch.randn(B, T, generator=g)
    isw = 0.5 + torch.rand(B, T, generator=g)
    eps_high = 3.0 if loss_type == "cispo" else 0.28
    num_items = float(mask.sum()) + 2.0
    obj = dict(beta=0.04, epsilon_low=0.2, epsilon_high=eps_high, loss_type=loss_type,
               importance_sampling_level=level, delta=delta, use_bias_correction_kl=bias_kl)
    module = liger.LigerFusedLinearGRPOLoss(compiled=False, chunk_size=2, temperature=0.9,
                                            max_completion_length=T + 1, **obj)
    leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    want = module(leaves[0], leaves[1], ids, mask, adv, bias=leaves[2], ref_per_token_logps=ref_lp,
                  old_per_token_logps=old, vllm_is_ratio=isw,
                  num_items_in_batch=torch.tensor(num_items))[0]
    want_grads = torch.autograd.grad(want, leaves)
    leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
    out = fused_linear_grpo_loss(
        leaves[0], leaves[1], ids, mask, adv, bias=leaves[2], old_logps=old, ref_logps=ref_lp,
        importance_weights=isw, temperature=0.9, chunk_tokens=4, impl="torch",
        num_items_in_batch=num_items if loss_type in ("dapo", "cispo", "vespo") else None,
        max_completion_length=T + 1 if loss_type == "dr_grpo" else None, **obj,
    )
    grads = torch.autograd.grad(out.loss, leaves)
    tag = f"[{loss_type}, {level}, delta={delta}, bias_kl={bias_kl}]"
    assert_close(out.loss, want, torch.float32, f"loss{tag}")
    for name, a, e in zip(("d hidden", "d weight", "d bias"), grads, want_grads):
        assert_close(a, e, torch.float32, f"{name}{tag}")
