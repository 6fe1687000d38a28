import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ftib.data.packing import IGNORE_INDEX, pack_documents, pad_batch

docs_strategy = st.lists(st.lists(st.integers(1, 50), min_size=0, max_size=30), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(docs=docs_strategy, block=st.integers(2, 17), eos=st.sampled_from([None, 99]))
def test_every_token_once_and_positions_restart(docs, block, eos):
    out, stats = pack_documents(docs, block, eos_id=eos, pad_id=0)
    expected = [d + ([eos] if eos is not None else []) for d in docs if d]
    mask = out["attention_mask"].flatten().bool()
    ids = out["input_ids"].flatten()[mask].tolist()
    pos = out["position_ids"].flatten()[mask].tolist()
    labels = out["labels"].flatten()[mask].tolist()
    # Every real token appears exactly once, in order.
    assert ids == [t for d in expected for t in d]
    assert stats.tokens == len(ids) and stats.documents == len(expected)
    # Positions restart at each document (and at each block for a document cut in pieces).
    k = 0
    for d in expected:
        start = k
        for j in range(len(d)):
            block_start = (start + j) % block == 0
            assert pos[k] == (0 if (j == 0 or block_start) else pos[k - 1] + 1)
            # No label asks a token to predict across a document or block boundary.
            assert labels[k] == (IGNORE_INDEX if pos[k] == 0 else d[j])
            k += 1
    assert out["input_ids"].shape == (stats.blocks, block)
    assert stats.padding == int((~mask).sum())


def test_small_case_by_hand():
    out, stats = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, pad_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0], [0, 0, 1, 2], [0, 0, 1, 2]]
    assert out["labels"].tolist() == [[-100, 2, 3, -100], [-100, -100, 7, 8], [-100, -100, -100, -100]]
    assert stats.split_documents == 2 and stats.padding == 3 and stats.fill == pytest.approx(9 / 12)
    dropped, s2 = pack_documents([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4, drop_last=True)
    assert dropped["input_ids"].shape == (2, 4) and s2.tokens == 8


def test_pad_batch_baseline():
    b = pad_batch([[1, 2, 3], [4]], pad_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [-100, -100, -100]]
    assert b["attention_mask"].sum().item() == 4
    with pytest.raises(ValueError, match="block_size"):
        pack_documents([[1]], 1)
    assert torch.equal(pad_batch([[1, 2, 3, 4]], max_length=2)["input_ids"], torch.tensor([[1, 2]]))
