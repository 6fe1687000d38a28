"""Fused linear cross-entropy: chunked PyTorch and Triton against the eager full-logits
reference (values and the gradients of hidden, lm_head weight and bias), over odd sizes,
ignored labels (-100), both reductions and the optional z-loss."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_parity import INTERPRET, assert_close, device_for, impl_params

from ftib.kernels.linear_ce import fused_linear_cross_entropy
from ftib.kernels.reference import linear_ce as ref

# (B, T, H, V): one token, odd sizes, V above a Triton block (4096).
SHAPES = [(1, 1, 8, 17), (3, 5, 16, 33), (4, 7, 24, 129), (2, 9, 12, 5000)]
DTYPES = [torch.float32, torch.bfloat16]


def _case(B, T, H, V, dtype, device, *, seed, bias=True, ignored=0.3):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g).to(dtype)
    weight = (torch.randn(V, H, generator=g) / math.sqrt(H) * 2).to(dtype)
    b = (torch.randn(V, generator=g) * 0.1).to(dtype) if bias else None
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[torch.rand(B, T, generator=g) < ignored] = -100
    labels.view(-1)[0] = 0  # at least one labelled token, and the first vocabulary row
    leaves = [hidden.to(device).requires_grad_(), weight.to(device).requires_grad_()]
    if b is not None:
        leaves.append(b.to(device).requires_grad_())
    return leaves, labels.to(device)


def _run(fn, leaves, labels, **kw):
    out = fn(leaves[0], leaves[1], labels, bias=leaves[2] if len(leaves) > 2 else None, **kw)
    grads = torch.autograd.grad(out[0], leaves)
    return out[0], out[1], grads


def _compare(impl, shape, dtype, *, reduction, z_loss_weight, bias, chunk, ignored=0.3, seed=0):
    leaves, labels = _case(*shape, dtype, device_for(impl), seed=sum(shape) + seed, bias=bias, ignored=ignored)
    kw = dict(reduction=reduction, z_loss_weight=z_loss_weight)
    got = _run(fused_linear_cross_entropy, leaves, labels, impl=impl, chunk_tokens=chunk, **kw)
    for leaf, grad in zip(leaves, got[2]):
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape
    if dtype != torch.float32:
        # Low precision is judged against the float32 reference on the same rounded inputs.
        leaves = [x.detach().float().requires_grad_() for x in leaves]
    want = _run(ref.linear_cross_entropy, leaves, labels, **kw)
    tag = f"[{impl}, {reduction}, z={z_loss_weight}, bias={bias}, chunk={chunk}]"
    assert_close(got[0], want[0], dtype, f"loss{tag}")
    assert_close(got[1], want[1], dtype, f"z_loss{tag}")
    for name, a, e in zip(("d hidden", "d weight", "d bias"), got[2], want[2]):
        assert_close(a, e, dtype, f"{name}{tag}")


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_reference_with_bias_and_z_loss(impl, dtype, shape, reduction):
    """bias, z-loss, ignored labels; 3-token chunks (many chunks, a ragged last one)."""
    _compare(impl, shape, dtype, reduction=reduction, z_loss_weight=1e-2, bias=True, chunk=3)


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_plain(impl, shape):
    """No bias, no z-loss, default chunking."""
    _compare(impl, shape, torch.float32, reduction="mean", z_loss_weight=0.0, bias=False, chunk=None)


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
def test_every_label_kept(impl):
    """No ignored label: the path without row selection."""
    _compare(impl, (3, 5, 16, 33), torch.float32, reduction="sum", z_loss_weight=1e-2, bias=True, chunk=4,
             ignored=0.0, seed=3)


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
def test_hand_computed_values(impl):
    # One token, V = 2, zero weights: logits (0, 0), lse = log 2, ce = log 2;
    # dL/dz = softmax - onehot(0) = (-1/2, 1/2); dW = dz^T h = (-1, 1) for h = 2.
    # With z-loss weight c: + c log(2)^2, dL/dz += 2 c log 2 * (1/2, 1/2).
    dev = device_for(impl)
    h = torch.tensor([[2.0]], device=dev, requires_grad=True)
    w = torch.zeros(2, 1, device=dev, requires_grad=True)
    y = torch.zeros(1, dtype=torch.long, device=dev)
    c = 0.1
    out = fused_linear_cross_entropy(h, w, y, z_loss_weight=c, impl=impl)
    (gw,) = torch.autograd.grad(out.loss, [w])
    l2 = math.log(2.0)
    assert_close(out.loss, torch.tensor(l2 + c * l2 * l2), torch.float32, "loss")
    assert_close(out.z_loss, torch.tensor(c * l2 * l2), torch.float32, "z_loss")
    want = torch.tensor([[-1.0 + 2 * c * l2], [1.0 + 2 * c * l2]])
    assert_close(gw, want, torch.float32, "dW")


@pytest.mark.parametrize("impl", impl_params("torch", "triton"))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_gives_zero_loss_and_grads(impl, reduction):
    leaves, labels = _case(3, 4, 8, 19, torch.float32, device_for(impl), seed=5)
    labels = torch.full_like(labels, -100)
    loss, z, grads = _run(fused_linear_cross_entropy, leaves, labels, impl=impl, reduction=reduction)
    assert float(loss.detach()) == 0.0 and float(z) == 0.0
    assert all(float(g.abs().max()) == 0.0 for g in grads)


def test_custom_ignore_index_and_int32_labels():
    leaves, labels = _case(2, 6, 8, 21, torch.float32, "cpu", seed=8)
    lab = torch.where(labels == -100, torch.full_like(labels, 7777), labels).to(torch.int32)
    got = _run(fused_linear_cross_entropy, leaves, lab, ignore_index=7777, impl="torch", chunk_tokens=5)
    want = _run(ref.linear_cross_entropy, leaves, labels)
    assert_close(got[0], want[0], torch.float32, "loss")
    for name, a, e in zip(("d hidden", "d weight", "d bias"), got[2], want[2]):
        assert_close(a, e, torch.float32, name)


def test_forward_without_grad_and_frozen_head():
    leaves, labels = _case(3, 5, 16, 33, torch.float32, "cpu", seed=9)
    h, w, b = leaves
    with torch.no_grad():
        got = fused_linear_cross_entropy(h, w, labels, bias=b, z_loss_weight=0.01, impl="torch", chunk_tokens=4)
        want = ref.linear_cross_entropy(h, w, labels, bias=b, z_loss_weight=0.01)
    assert_close(got.loss, want[0], torch.float32, "no_grad loss")
    w.requires_grad_(False)
    b.requires_grad_(False)
    out = fused_linear_cross_entropy(h, w, labels, bias=b, impl="torch", chunk_tokens=4)
    (gh,) = torch.autograd.grad(out.loss, [h])
    (gh_ref,) = torch.autograd.grad(ref.linear_cross_entropy(h, w, labels, bias=b)[0], [h])
    assert_close(gh, gh_ref, torch.float32, "d hidden (frozen head)")


def test_autocast_computes_in_the_autocast_dtype_with_float32_master_grads():
    """Under bf16 autocast: the value equals the reference on bf16-cast inputs, and a
    float32 weight gets a float32 gradient through the cast."""
    leaves, labels = _case(2, 7, 16, 129, torch.float32, "cpu", seed=10, bias=False)
    h, w = leaves
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_linear_cross_entropy(h, w, labels, impl="torch", chunk_tokens=5)
    gh, gw = torch.autograd.grad(out.loss, [h, w])
    assert gw.dtype == torch.float32 and gh.dtype == torch.float32
    hb, wb = h.detach().bfloat16().float().requires_grad_(), w.detach().bfloat16().float().requires_grad_()
    want, _ = ref.linear_cross_entropy(hb, wb, labels)
    assert_close(out.loss, want, torch.bfloat16, "autocast loss")
    assert_close(gw, torch.autograd.grad(want, [wb])[0], torch.bfloat16, "autocast dW")


def test_custom_op_traces_and_differentiates_under_compile():
    leaves, labels = _case(3, 5, 8, 23, torch.float32, "cpu", seed=2)
    h, w, b = leaves

    def step(h, w, b):
        return fused_linear_cross_entropy(h, w, labels, bias=b, z_loss_weight=0.01, impl="torch").loss * 3.0

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got = torch.autograd.grad(compiled(h, w, b), [h, w, b])
    want = torch.autograd.grad(3.0 * ref.linear_cross_entropy(h, w, labels, bias=b, z_loss_weight=0.01)[0],
                               [h, w, b])
    for name, a, e in zip(("d hidden", "d weight", "d bias"), got, want):
        assert_close(a, e, torch.float32, f"compiled {name}")


def test_opcheck():
    leaves, labels = _case(2, 3, 8, 13, torch.float32, "cpu", seed=12, bias=False)
    h, w = (x.detach() for x in leaves)
    args = (h.reshape(-1, 8), w, None, labels.reshape(-1), -100, 0.0, "mean", False, False, False, 4, "torch")
    torch.library.opcheck(torch.ops.ftib.fused_linear_cross_entropy.default, args,
                          test_utils=("test_schema", "test_faketensor"))


def test_second_backward_raises_instead_of_double_scaling():
    leaves, labels = _case(2, 3, 8, 13, torch.float32, "cpu", seed=4)
    out = fused_linear_cross_entropy(*leaves[:2], labels, bias=leaves[2], impl="torch")
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.loss.backward()


def test_backward_allocates_no_gradient_sized_buffer():
    from torch.profiler import ProfilerActivity, profile

    leaves, labels = _case(3, 5, 64, 4001, torch.float32, "cpu", seed=7, bias=False)
    h, w = leaves
    out = fused_linear_cross_entropy(h, w, labels, impl="torch")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out.loss.backward()
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    assert allocated < h.numel() * h.element_size(), f"backward allocated {allocated} bytes"
    assert w.grad is not None and h.grad is not None


def test_errors_name_the_argument():
    leaves, labels = _case(2, 3, 4, 11, torch.float32, "cpu", seed=1)
    h, w, _ = leaves
    with pytest.raises(ValueError, match="weight"):
        fused_linear_cross_entropy(h, torch.randn(11, 5), labels)
    with pytest.raises(TypeError, match="weight"):
        fused_linear_cross_entropy(h, w.double(), labels)
    with pytest.raises(ValueError, match="labels has shape"):
        fused_linear_cross_entropy(h, w, labels[:, :2])
    with pytest.raises(TypeError, match="labels"):
        fused_linear_cross_entropy(h, w, labels.float())
    with pytest.raises(ValueError, match="label 11 at flat position 0"):
        fused_linear_cross_entropy(h, w, torch.full_like(labels, 11))
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(h, w, labels, reduction="none")
    with pytest.raises(ValueError, match="z_loss_weight"):
        fused_linear_cross_entropy(h, w, labels, z_loss_weight=-1.0)
    if not INTERPRET and not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            fused_linear_cross_entropy(h, w, labels, impl="triton")
