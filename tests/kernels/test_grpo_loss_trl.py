"""The GRPO objectives against TRL 1.16's own ``GRPOTrainer._compute_loss`` on identical
inputs: loss, metrics and the gradients of hidden, lm_head weight and bias, for every
loss type and objective option (skipped where TRL is not installed).

TRL's method is called unbound on a stand-in trainer that carries exactly the attributes
it reads (one process, no accumulation, no vLLM except for the importance-sampling ratio),
with its per-token log-prob function replaced by the same full-logits projection the
reference uses: what is compared is TRL's objective, not its model plumbing."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from kernel_parity import assert_close

from ftib.kernels.grpo_loss import fused_linear_grpo_loss
from ftib.kernels.reference import grpo_loss as ref

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
pytestmark = pytest.mark.filterwarnings("ignore:.*TRL warns too:UserWarning")

# TRL's metric names for ftib's.
TRL_METRICS = {"kl": "kl", "clip_ratio_low": "clip_ratio/low_mean", "clip_ratio_high": "clip_ratio/high_mean",
               "clip_ratio_region": "clip_ratio/region_mean", "cispo_clip_ratio": "cispo_clip_ratio",
               "vespo_phi_seq_mean": "vespo/phi_seq_mean", "entropy": "entropy"}


class _Accelerator:
    num_processes = 1

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def _trl_loss(hidden, weight, bias, c, *, temperature, num_items, max_len, obj):
    """TRL 1.16's _compute_loss on the case c; returns loss and TRL's logged metrics."""
    def logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, compute_entropy=False, **kw):
        logps, ent = ref.token_logps_and_entropy(hidden, weight, bias, c["ids"], temperature, True)
        return logps, ent, None

    args = SimpleNamespace(
        use_bias_correction_kl=obj.get("use_bias_correction_kl", True), delta=obj.get("delta"),
        sapo_temperature_pos=obj.get("sapo_temperature_pos", 1.0),
        sapo_temperature_neg=obj.get("sapo_temperature_neg", 1.05),
        vespo_k_pos=obj.get("vespo_k_pos", 2.0), vespo_lambda_pos=obj.get("vespo_lambda_pos", 3.0),
        vespo_k_neg=obj.get("vespo_k_neg", 3.0), vespo_lambda_neg=obj.get("vespo_lambda_neg", 2.0),
        steps_per_generation=1,
    )
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=logps_and_entropies, top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level=obj.get("importance_sampling_level", "token"),
        beta=obj["beta"], args=args, loss_type=obj["loss_type"], epsilon_low=obj["epsilon_low"],
        epsilon_high=obj["epsilon_high"], get_gamma_weights=trl_grpo.GRPOTrainer.get_gamma_weights,
        use_vllm=c["isw"] is not None, vllm_importance_sampling_correction=c["isw"] is not None,
        model=SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        accelerator=_Accelerator(), max_completion_length=max_len, _entropy_bonus_enabled=False,
        aux_loss_enabled=False, _metrics=defaultdict(lambda: defaultdict(list)),
    )
    B, T = c["ids"].shape
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": c["ids"], "completion_mask": c["mask"].long(), "advantages": c["adv"],
        "num_items_in_batch": torch.tensor(float(num_items)),
    }
    if c["old"] is not None:
        inputs["old_per_token_logps"] = c["old"]
    if c["ref"] is not None:
        inputs["ref_per_token_logps"] = c["ref"]
    if c["isw"] is not None:
        inputs["importance_sampling_ratio"] = c["isw"]
    loss = trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _case(B, T, H, V, seed, *, old, isw):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) / math.sqrt(H) * 2
    bias = torch.randn(V, generator=g) * 0.1
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = True
    mask[1, 1:] = False  # a one-token completion
    adv = torch.randn(B, generator=g)
    adv[2] = 0.0  # A = 0: the sign tests (A > 0, A >= 0) differ
    with torch.no_grad():
        logps, _ = ref.token_logps_and_entropy(hidden, weight, bias, ids, 0.8)
    c = dict(ids=ids, mask=mask, adv=adv, hidden=hidden, weight=weight, bias=bias,
             old=(logps - 0.3 * torch.randn(B, T, generator=g)) if old else None,
             ref=logps + 0.5 * torch.randn(B, T, generator=g),
             isw=(0.5 + torch.rand(B, T, generator=g)) if isw else None)
    return c


OBJECTIVES = [
    pytest.param({}, id="token"),
    pytest.param(dict(importance_sampling_level="sequence"), id="sequence"),
    pytest.param(dict(delta=1.4), id="delta"),
    pytest.param(dict(use_bias_correction_kl=False), id="no_bias_kl"),
    pytest.param(dict(importance_sampling_level="sequence", delta=1.1), id="sequence_delta"),
]


@pytest.mark.parametrize("old, isw", [(True, True), (False, False)], ids=["old_isw", "on_policy"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("loss_type", ref.LOSS_TYPES)
def test_matches_trl_compute_loss(loss_type, objective, beta, old, isw):
    c = _case(5, 6, 12, 37, seed=ref.LOSS_TYPES.index(loss_type) * 7 + len(objective) + int(old),
              old=old, isw=isw)
    obj = dict(objective, loss_type=loss_type, beta=beta, epsilon_low=0.2,
               epsilon_high=3.0 if loss_type == "cispo" else 0.28)
    num_items, max_len, temp = float(c["mask"].sum()) + 2.0, 8, 0.8
    leaves = [c["hidden"].clone().requires_grad_(), c["weight"].clone().requires_grad_(),
              c["bias"].clone().requires_grad_()]
    want_loss, want_metrics = _trl_loss(*leaves, c, temperature=temp, num_items=num_items, max_len=max_len, obj=obj)
    want_grads = torch.autograd.grad(want_loss, leaves)
    tag = f"[{loss_type}, {objective}, beta={beta}, old={old}]"
    for impl in ("reference", "torch"):
        leaves = [x.detach().clone().requires_grad_() for x in leaves]
        out = fused_linear_grpo_loss(
            leaves[0], leaves[1], c["ids"], c["mask"], c["adv"], bias=leaves[2], old_logps=c["old"],
            ref_logps=c["ref"], importance_weights=c["isw"], temperature=temp, compute_entropy=True,
            num_items_in_batch=num_items if loss_type in ("dapo", "cispo", "vespo") else None,
            max_completion_length=max_len if loss_type == "dr_grpo" else None, chunk_tokens=4, impl=impl,
            **obj,
        )
        grads = torch.autograd.grad(out.loss, leaves)
        assert_close(out.loss, want_loss, torch.float32, f"loss {impl}{tag}")
        for name, a, e in zip(("d hidden", "d weight", "d bias"), grads, want_grads):
            assert_close(a, e, torch.float32, f"{name} {impl}{tag}")
        for k, v in out.metrics.items():
            if k == "kl" and beta == 0.0:
                assert k not in want_metrics and float(v) == 0.0
                continue
            assert_close(v, torch.tensor(want_metrics[TRL_METRICS[k]]), torch.float32, f"metric {k} {impl}{tag}")
        logged = {TRL_METRICS[k] for k in out.metrics if not (k == "kl" and beta == 0.0)}
        assert logged == {k for k in want_metrics if k in TRL_METRICS.values()}, tag
