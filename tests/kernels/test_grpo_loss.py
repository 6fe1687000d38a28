"""Fused linear GRPO loss: chunked PyTorch and Triton against the eager full-logits
reference, values, metrics and the gradients of hidden, lm_head weight and bias."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_parity import assert_close, device_for, impl_params

from ftib.kernels.grpo_loss import fused_linear_grpo_loss
from ftib.kernels.reference import grpo_loss as ref

# The objective combinations TRL warns about are tested on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:.*TRL warns too:UserWarning")

# (B*G, T, H, V): a single token of a group of one, odd sizes, V above a Triton block.
SHAPES = [(1, 1, 8, 17), (3, 5, 16, 33), (4, 7, 24, 129), (6, 9, 12, 5000)]
LOSS_TYPES = list(ref.LOSS_TYPES)
SUM_NORMALISED = ("dapo", "cispo", "vespo")
DTYPES = [torch.float32, torch.bfloat16]


def _case(B, T, H, V, dtype, device, *, seed, full=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) / math.sqrt(H) * 2).to(dtype)
    bias = (torch.randn(V, generator=g) * 0.1).to(dtype) if full else None
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = True
    if B > 2:
        mask[1] = False  # an all-masked completion
    adv = torch.randn(B, generator=g)
    with torch.no_grad():
        logps, _ = ref.token_logps_and_entropy(hidden.float(), weight.float(),
                                               None if bias is None else bias.float(), ids, 0.8)
    # Old policy near the current one (ratios on both sides of the clip range, none within
    # 0.06 of a clip boundary in log space, so bf16 rounding cannot flip a token), a
    # reference policy further away, and an importance-sampling correction.
    log_ratio = 0.3 * torch.randn(B, T, generator=g)
    for edge in (math.log(1 - 0.2), math.log(1 + 0.28)):
        near = (log_ratio - edge).abs() < 0.06
        log_ratio = torch.where(near, edge + 0.12 * torch.sign(log_ratio - edge + 1e-9), log_ratio)
    old = logps - log_ratio if full else None
    ref_lp = logps + 0.5 * torch.randn(B, T, generator=g) if full else None
    isw = (0.5 + torch.rand(B, T, generator=g)) if full else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    leaves = [to(hidden).requires_grad_(), to(weight).requires_grad_()]
    if bias is not None:
        leaves.append(to(bias).requires_grad_())
    return dict(
        leaves=leaves, ids=to(ids), mask=to(mask), adv=to(adv), old=to(old), ref=to(ref_lp), isw=to(isw)
    )


def _run(fn, c, loss_type, *, full, objective=None, **extra):
    leaves = c["leaves"]
    kwargs = dict(
        bias=leaves[2] if len(leaves) > 2 else None,
        old_logps=c["old"], ref_logps=c["ref"], importance_weights=c["isw"],
        beta=0.04 if full else 0.0, epsilon_low=0.2,
        epsilon_high=(2.0 if loss_type == "cispo" else 0.28) if full else None,
        loss_type=loss_type, temperature=0.8 if full else 1.0,
        num_items_in_batch=float(c["mask"].sum()) + 3.0 if loss_type in SUM_NORMALISED else None,
        max_completion_length=c["mask"].shape[1] + 2 if loss_type == "dr_grpo" else None,
        **(objective or {}),
    )
    out = fn(leaves[0], leaves[1], c["ids"], c["mask"], c["adv"], compute_entropy=True, **kwargs, **extra)
    loss, metrics, logps = out
    grads = torch.autograd.grad(loss, leaves)
    return loss, metrics, logps, grads


def _compare(impl, shape, dtype, loss_type, full, chunk, objective=None):
    c = _case(*shape, dtype, device_for(impl), seed=sum(shape) * 10 + LOSS_TYPES.index(loss_type), full=full)
    got = _run(fused_linear_grpo_loss, c, loss_type, full=full, objective=objective, impl=impl, chunk_tokens=chunk)
    for leaf, grad in zip(c["leaves"], got[3]):
        assert grad.dtype == leaf.dtype
    if dtype != torch.float32:
        # Low precision is judged against the float32 reference on the same (rounded)
        # inputs: both bf16 computations approximate it, neither is the truth.
        c = dict(c, leaves=[x.detach().float().requires_grad_() for x in c["leaves"]])
    want = _run(ref.fused_linear_grpo_loss, c, loss_type, full=full, objective=objective)
    tag = f"[{impl}, {loss_type}, {'full' if full else 'minimal'}, {objective or ''}]"
    assert_close(got[0], want[0], dtype, f"loss{tag}")
    n_tokens = float(c["mask"].sum().clamp(min=1))
    assert list(got[1]) == list(want[1]) == list(ref.metric_names(loss_type, True)), tag
    for k in want[1]:
        if "clip_ratio" in k and dtype != torch.float32:
            # A count: a ratio within bf16 rounding of 1 +- eps may land on either side.
            flipped = abs(float(got[1][k]) - float(want[1][k])) * n_tokens
            assert flipped < 2.5, f"metric {k}{tag}: {flipped:.1f} tokens classified differently"
        else:
            assert_close(got[1][k], want[1][k], dtype, f"metric {k}{tag}")
    m = c["mask"].bool()
    assert_close(got[2][m], want[2][m], dtype, f"logps{tag}")
    for name, a, e in zip(("d hidden", "d weight", "d bias"), got[3], want[3]):
        assert_close(a, e, dtype, f"{name}{tag}")


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_full_options_match_reference(impl, dtype, shape, loss_type):
    """old/ref log-probs, KL, asymmetric clip, IS weights, bias, temperature; 3-token chunks."""
    _compare(impl, shape, dtype, loss_type, full=True, chunk=3)


# Objective variants beyond the loss type: GSPO's sequence-level ratio, the two-sided
# clip, the KL without bias correction, non-default SAPO/VESPO parameters.
OBJECTIVES = [
    pytest.param(dict(importance_sampling_level="sequence"), id="sequence"),
    pytest.param(dict(delta=1.5), id="delta"),
    pytest.param(dict(use_bias_correction_kl=False), id="no_bias_kl"),
    pytest.param(dict(importance_sampling_level="sequence", delta=1.1, use_bias_correction_kl=False),
                 id="sequence_delta_no_bias_kl"),
    pytest.param(dict(sapo_temperature_pos=0.7, sapo_temperature_neg=1.3, vespo_k_pos=1.5,
                      vespo_lambda_pos=2.5, vespo_k_neg=2.0, vespo_lambda_neg=1.0), id="params"),
]


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_objective_variants_match_reference(impl, objective, shape, loss_type):
    """float32, all options, 4-token chunks (a completion spans chunks at every shape)."""
    _compare(impl, shape, torch.float32, loss_type, full=True, chunk=4, objective=objective)


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "vespo", "sapo"])
def test_minimal_options_match_reference(impl, shape, loss_type):
    """num_iterations == 1 (no old log-probs), beta == 0, no bias; default chunking."""
    _compare(impl, shape, torch.float32, loss_type, full=False, chunk=None)


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
@pytest.mark.parametrize("shape", SHAPES[1:3], ids=lambda s: "x".join(map(str, s)))
def test_forward_without_grad_matches_reference(impl, shape):
    """Under no_grad (e.g. computing old log-probs) no gradient buffers are produced."""
    c = _case(*shape, torch.float32, device_for(impl), seed=11)
    h, w, b = c["leaves"]
    kwargs = dict(bias=b, old_logps=c["old"], ref_logps=c["ref"], beta=0.04, loss_type="grpo",
                  compute_entropy=True)
    with torch.no_grad():
        got = fused_linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], impl=impl, chunk_tokens=4, **kwargs)
        want = ref.fused_linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], **kwargs)
    assert_close(got.loss, want[0], torch.float32, "no_grad loss")
    for k in want[1]:
        assert_close(got.metrics[k], want[1][k], torch.float32, f"no_grad {k}")
    m = c["mask"].bool()
    assert_close(got.logps[m], want[2][m], torch.float32, "no_grad logps")


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
def test_hand_computed_values(impl):
    # One token, V = 2, zero weights: logits (0, 0), logp(y=0) = log 1/2.
    dev = device_for(impl)
    h = torch.tensor([[[2.0]]], device=dev, requires_grad=True)
    w = torch.zeros(2, 1, device=dev, requires_grad=True)
    ids = torch.zeros(1, 1, dtype=torch.long, device=dev)
    mask = torch.ones(1, 1, device=dev)
    adv = torch.ones(1, device=dev)
    half = torch.full((1, 1), math.log(0.5), device=dev)
    for fn in (ref.fused_linear_grpo_loss, lambda *a, **k: fused_linear_grpo_loss(*a, impl=impl, **k)):
        # Ratio 1, A = 1: loss -1; dL/dlogp = -1, dlogp/dz = (1/2, -1/2), dz = (-1/2, 1/2),
        # dW = dz * h = (-1, 1).
        loss, metrics, _ = fn(h, w, ids, mask, adv, old_logps=half, loss_type="dapo", num_items_in_batch=1)
        (gw,) = torch.autograd.grad(loss, [w])
        assert_close(loss, torch.tensor(-1.0), torch.float32, "loss")
        assert_close(gw, torch.tensor([[-1.0], [1.0]]), torch.float32, "dW")
        # Old log-prob half the current prob: ratio 2 > 1.2 with A > 0 -> clipped, loss
        # -1.2, no gradient, clip_ratio_high 1.
        old = half - math.log(2.0)
        loss, metrics, _ = fn(h, w, ids, mask, adv, old_logps=old, loss_type="dapo", num_items_in_batch=1)
        (gw,) = torch.autograd.grad(loss, [w])
        assert_close(loss, torch.tensor(-1.2), torch.float32, "clipped loss")
        assert_close(gw, torch.zeros(2, 1), torch.float32, "clipped dW")
        assert float(metrics["clip_ratio_high"]) == 1.0 and float(metrics["clip_ratio_region"]) == 1.0


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
def test_all_masked_batch_gives_zero_loss_and_grads(impl):
    c = _case(3, 4, 8, 19, torch.float32, device_for(impl), seed=5)
    c["mask"] = torch.zeros_like(c["mask"])
    loss, metrics, logps, grads = _run(fused_linear_grpo_loss, c, "grpo", full=True, impl=impl)
    assert float(loss.detach()) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in grads)
    assert float(metrics["kl"]) == 0.0


def test_frozen_lm_head_skips_its_gradient():
    c = _case(3, 4, 8, 19, torch.float32, "cpu", seed=6)
    h, w, b = c["leaves"]
    w.requires_grad_(False)
    b.requires_grad_(False)
    out = fused_linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], bias=b, loss_type="bnpo", impl="torch")
    (gh,) = torch.autograd.grad(out.loss, [h])
    want = ref.fused_linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], bias=b, loss_type="bnpo")[0]
    assert_close(gh, torch.autograd.grad(want, [h])[0], torch.float32, "d hidden")


def test_errors_name_the_argument():
    c = _case(2, 3, 4, 11, torch.float32, "cpu", seed=1)
    h, w, _ = c["leaves"]
    args = (h, w, c["ids"], c["mask"], c["adv"])
    with pytest.raises(ValueError, match="num_items_in_batch"):
        fused_linear_grpo_loss(*args, loss_type="dapo")
    with pytest.raises(ValueError, match="ref_logps"):
        fused_linear_grpo_loss(*args, loss_type="grpo", beta=0.1)
    with pytest.raises(ValueError, match="unknown loss_type 'ppo'"):
        fused_linear_grpo_loss(*args, loss_type="ppo")
    with pytest.raises(ValueError, match="unknown importance_sampling_level 'seq'"):
        fused_linear_grpo_loss(*args, loss_type="grpo", importance_sampling_level="seq")
    with pytest.raises(ValueError, match="delta"):
        fused_linear_grpo_loss(*args, loss_type="grpo", delta=-1.0)
    with pytest.raises(ValueError, match="num_items_in_batch"):
        fused_linear_grpo_loss(*args, loss_type="cispo")
    with pytest.warns(UserWarning, match="luspo"):
        fused_linear_grpo_loss(*args, loss_type="luspo")
    with pytest.warns(UserWarning, match="length"):
        fused_linear_grpo_loss(*args, loss_type="bnpo", importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="weight"):
        fused_linear_grpo_loss(h, torch.randn(11, 5), c["ids"], c["mask"], c["adv"], loss_type="grpo")
    with pytest.raises(TypeError, match="weight"):
        fused_linear_grpo_loss(h, w.double(), c["ids"], c["mask"], c["adv"], loss_type="grpo")
    with pytest.raises(ValueError, match="advantages"):
        fused_linear_grpo_loss(h, w, c["ids"], c["mask"], torch.randn(3), loss_type="grpo")
    with pytest.raises(ValueError, match="old_logps"):
        fused_linear_grpo_loss(*args, loss_type="grpo", old_logps=torch.randn(2, 4))
    with pytest.raises(ValueError, match="completion_mask is on meta"):
        fused_linear_grpo_loss(h, w, c["ids"], c["mask"].to("meta"), c["adv"], loss_type="grpo")


def test_custom_op_traces_and_differentiates_under_compile():
    c = _case(3, 5, 8, 23, torch.float32, "cpu", seed=2)
    h, w, b = c["leaves"]

    def step(h, w, b):
        out = fused_linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], bias=b, old_logps=c["old"],
                                     ref_logps=c["ref"], beta=0.04, loss_type="grpo", impl="torch")
        return out.loss * 3.0

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(h, w, b), [h, w, b])
    want_loss = 3.0 * ref.fused_linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], bias=b, old_logps=c["old"],
                                                 ref_logps=c["ref"], beta=0.04, loss_type="grpo")[0]
    want = torch.autograd.grad(want_loss, [h, w, b])
    for name, a, e in zip(("d hidden", "d weight", "d bias"), got, want):
        assert_close(a, e, torch.float32, f"compiled {name}")


def test_second_backward_raises_instead_of_double_scaling():
    c = _case(2, 3, 8, 13, torch.float32, "cpu", seed=4)
    h, w, b = c["leaves"]
    out = fused_linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], bias=b, loss_type="grpo", impl="torch")
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.loss.backward()


def test_backward_allocates_no_gradient_sized_buffer():
    # The gradients are made in the forward; the backward scales them in place and hands
    # them to .grad as they are. Regressions this catches: autograd materialising zero
    # gradients for the op's unused outputs (a zero (V, H) tensor as large as dL/dW) and
    # AccumulateGrad cloning dL/dW because something still references it.
    from torch.profiler import ProfilerActivity, profile

    c = _case(3, 5, 64, 4001, torch.float32, "cpu", seed=7, full=False)
    h, w = c["leaves"]
    out = fused_linear_grpo_loss(h, w, c["ids"], c["mask"], c["adv"], loss_type="bnpo", impl="torch")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out.loss.backward()
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    smallest_grad = h.numel() * h.element_size()
    assert allocated < smallest_grad, (
        f"backward allocated {allocated} bytes; a gradient-sized buffer is {smallest_grad}"
    )
    assert w.grad is not None and h.grad is not None


def test_autocast_rule_runs_the_gemms_in_the_autocast_dtype():
    """Under autocast, bf16 hidden states meet a float32 master lm_head: the op casts the
    GEMM operands to bf16 (the same result as passing bf16 operands) and the gradient
    reaches the float32 master; the log-prob inputs keep their float32 values."""
    c = _case(3, 5, 16, 33, torch.float32, "cpu", seed=8)
    h, w, b = c["leaves"]
    kw = dict(old_logps=c["old"], ref_logps=c["ref"], beta=0.04, loss_type="grpo", impl="torch")
    hb = h.detach().bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused_linear_grpo_loss(hb, w, c["ids"], c["mask"], c["adv"], bias=b, **kw)
    gh, gw = torch.autograd.grad(got.loss, [hb, w])
    assert gw.dtype == torch.float32 and gh.dtype == torch.bfloat16
    wb = w.detach().bfloat16().requires_grad_()
    bb = b.detach().bfloat16()
    hb2 = h.detach().bfloat16().requires_grad_()
    want = fused_linear_grpo_loss(hb2, wb, c["ids"], c["mask"], c["adv"], bias=bb, **kw)
    wh, ww = torch.autograd.grad(want.loss, [hb2, wb])
    assert torch.equal(got.loss, want.loss) and torch.equal(got.logps, want.logps)
    assert torch.equal(gh, wh) and torch.equal(gw, ww.float())
