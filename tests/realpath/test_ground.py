"""The ``ground`` stage on the Qwen3-VL stand-in: the real processor geometry (patch 16,
merge 2, its own pixel budget: 64-pixel scenes become many tokens per cell) and Qwen's
real tokenizer (Chinese words of one or several tokens)."""

from __future__ import annotations

import torch

from tests.stages.test_ground import _scenes_file
from tests.stages.test_stages import changed, run_stage, state


def test_ground_on_the_qwen3_vl_standin(standin, tmp_path):
    base = standin("qwen3-vl")
    before = state(base)
    path = _scenes_file(tmp_path, 12, size=64)
    rec, ckpt = run_stage(tmp_path, "ground", {"data": str(path), "held_out": 4,
                                               "train": {"max_steps": 2, "batch_size": 4}}, model=str(base))
    m = rec["metrics"]
    assert m["words/object"] == 10 and m["words/colour"] == 6
    # Qwen's BPE: two of the 16 object/colour words are several tokens (mean embeddings)
    assert m["words_multi_token"] == 2
    # 64-pixel scenes under the processor's minimum of 65,536 pixels: 256 x 256, 8 x 8 merged
    # tokens over the 3 x 3 grid. Per axis tokens 2 and 5 lie 2/3 in one cell, so the four
    # tokens at their crossings cover 4/9 < min_cell_share of any cell: 4 per image, over
    # 2 steps of 4 images
    assert m["tokens_astride_cells"] == 4 * 4 * 2
    assert torch.isfinite(torch.tensor(m["final_loss"]))
    assert {"heldout_acc/object", "heldout_acc/colour", "heldout_acc/object_before"} <= set(m)
    diff = changed(before, state(ckpt))
    assert diff and all(".visual." in k for k in diff)
