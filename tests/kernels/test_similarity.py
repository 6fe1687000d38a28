"""Embedding-reward similarity: native C++ and Triton against the eager reference."""

from __future__ import annotations

import pytest
import torch

from kernel_parity import assert_close, device_for, impl_params

from ftib.kernels.reference import similarity as ref
from ftib.kernels.similarity import embedding_similarity

# (N, T, H, M): a single token and feature, odd sizes, T = 1, H above one Triton block.
SHAPES = [(1, 1, 1, 1), (3, 5, 7, 2), (6, 13, 33, 3), (4, 1, 130, 4), (5, 9, 300, 5)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(N, T, H, M, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, T, H, generator=g).to(dtype)
    mask = torch.rand(N, T, generator=g) > 0.35
    mask[:, 0] = True
    if N > 1:
        mask[1] = False  # an all-masked completion scores 0
    ref_emb = torch.randn(M, H, generator=g)
    index = torch.randint(0, M, (N,), generator=g)
    ref_hidden = torch.randn(M, T + 2, H, generator=g).to(dtype)
    ref_mask = torch.rand(M, T + 2, generator=g) > 0.3
    ref_mask[:, -1] = True
    to = lambda t: t.to(device)  # noqa: E731
    return map(to, (hidden, mask, ref_emb, index, ref_hidden, ref_mask))


@pytest.mark.parametrize("impl", impl_params("native", "triton"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_matches_reference_pooled_refs(impl, dtype, shape, threshold):
    hidden, mask, ref_emb, index, _, _ = _inputs(*shape, dtype, device_for(impl), seed=sum(shape))
    got = embedding_similarity(hidden, mask, ref_emb, index, threshold=threshold, impl=impl)
    want = ref.embedding_similarity(hidden, mask, ref_emb, index, threshold=threshold)
    assert got.dtype == torch.float32
    assert_close(got, want, dtype, f"similarity[{impl}]")


@pytest.mark.parametrize("impl", impl_params("native", "triton"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES[1:4], ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_hidden_refs(impl, dtype, shape):
    hidden, mask, _, index, ref_hidden, ref_mask = _inputs(*shape, dtype, device_for(impl), seed=7)
    got = embedding_similarity(
        hidden, mask, index=index, ref_hidden=ref_hidden, ref_mask=ref_mask, threshold=0.1, impl=impl
    )
    want = ref.embedding_similarity(
        hidden, mask, index=index, ref_hidden=ref_hidden, ref_mask=ref_mask, threshold=0.1
    )
    assert_close(got, want, dtype, f"similarity[{impl}, ref_hidden]")


@pytest.mark.parametrize("impl", impl_params("native", "triton"))
def test_known_values_and_defaults(impl):
    # Pools to (1, 1) and (0, 3); refs (1, 1) and (1, 0): cosines 1 and 0 without index.
    dev = device_for(impl)
    hidden = torch.tensor([[[1.0, 0.0], [5.0, 5.0], [1.0, 2.0]], [[9.0, 9.0], [0.0, 3.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]])
    refs = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    got = embedding_similarity(hidden.to(dev), mask.to(dev), refs.to(dev), impl=impl)
    assert_close(got, torch.tensor([1.0, 0.0]), torch.float32, "known values")
    got = embedding_similarity(
        hidden.to(dev), mask.to(dev), refs.to(dev), torch.tensor([1, 0]).to(dev), threshold=0.5, impl=impl
    )
    expected = torch.tensor([2**0.5 - 1, 2**0.5 - 1])  # (1/sqrt2 - 0.5) / 0.5
    assert_close(got, expected, torch.float32, "threshold rescale")


def test_native_is_not_confused_by_strided_inputs():
    hidden = torch.randn(6, 4, 10).transpose(0, 1)  # (4, 6, 10), not contiguous
    mask = (torch.rand(6, 4) > 0.3).t()
    refs = torch.randn(4, 10)
    got = embedding_similarity(hidden, mask, refs, impl="native")
    assert_close(got, ref.embedding_similarity(hidden, mask, refs), torch.float32, "strided")


def test_errors_name_the_argument():
    h = torch.randn(2, 3, 4)
    m = torch.ones(2, 3)
    r = torch.randn(2, 4)
    with pytest.raises(ValueError, match="mask"):
        embedding_similarity(h, torch.ones(2, 4), r)
    with pytest.raises(ValueError, match="ref"):
        embedding_similarity(h, m, torch.randn(2, 5))
    with pytest.raises(TypeError, match="hidden"):
        embedding_similarity(h.long(), m, r)
    with pytest.raises(ValueError, match="index"):
        embedding_similarity(h, m, torch.randn(3, 4))
    with pytest.raises(ValueError, match="index"):
        embedding_similarity(h, m, r, torch.tensor([0, 2]), impl="native")
    with pytest.raises(ValueError, match="threshold"):
        embedding_similarity(h, m, r, threshold=1.0)
    with pytest.raises(ValueError, match="mask is on meta"):
        embedding_similarity(h, m.to("meta"), r)
    with pytest.raises(ValueError, match="impl"):
        embedding_similarity(h, m, r, impl="cuda-magic")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_explicit_triton_on_cpu_raises_without_interpreter():
    from kernel_parity import INTERPRET

    if INTERPRET:
        pytest.skip("this process runs Triton's interpreter")
    with pytest.raises(RuntimeError, match="triton"):
        embedding_similarity(torch.randn(2, 3, 4), torch.ones(2, 3), torch.randn(2, 4), impl="triton")


def test_custom_op_traces_under_compile():
    hidden, mask, refs, index, _, _ = _inputs(3, 5, 8, 2, torch.float32, "cpu", seed=1)
    torch.library.opcheck(
        torch.ops.ftib.embedding_similarity.default,
        (hidden, mask.float(), refs, None, index, 0.2, "native"),
    )
    fn = torch.compile(
        lambda h, m, r, i: embedding_similarity(h, m, r, i, impl="native") * 2, backend="aot_eager", fullgraph=True
    )
    assert_close(fn(hidden, mask, refs, index), 2 * ref.embedding_similarity(hidden, mask, refs, index),
                 torch.float32, "compiled")
