"""The ``ground`` stage: word-tied alignment of the vision tower (issue 17)."""

import json
import random

import pytest
import torch

from ftib.core import ConfigError, FtibError
from ftib.data.loaders import load_cells
from ftib.stages.ground import cell_of_tokens

from .test_stages import changed, load_recipe_from, run_stage, state


def test_tokens_map_to_the_cell_covering_most_of_them():
    three = [(r, c) for r in range(3) for c in range(3)]
    assert cell_of_tokens(torch.tensor([1, 6, 6]), 2, (3, 3)) == three
    # 6x6 merged tokens on a 3x3 grid: each cell gets a 2x2 block
    fine = cell_of_tokens(torch.tensor([1, 12, 12]), 2, (3, 3))
    assert fine[:6] == [(0, 0), (0, 0), (0, 1), (0, 1), (0, 2), (0, 2)] and fine[-1] == (2, 2)
    assert len(fine) == 36 and all(fine.count(c) == 4 for c in three)
    # 3x3 tokens over a 4x4 grid: the middle row and column straddle two cells each
    four = cell_of_tokens(torch.tensor([1, 6, 6]), 2, (4, 4))
    assert four == [(0, 0), None, (0, 3), None, None, None, (3, 0), None, (3, 3)]
    # non-square grids and two frames
    assert cell_of_tokens(torch.tensor([2, 2, 4]), 2, (1, 2)) == [(0, 0), (0, 1)] * 2
    # a lower share admits the straddling tokens (ties go to the later cell)
    assert None not in cell_of_tokens(torch.tensor([1, 6, 6]), 2, (4, 4), min_share=0.25)


def _scenes_file(tmp_path, n, *, size=48, seed=0, rows=None):
    """``n`` FTibWorld scenes as a cells file, the way the world writes them."""
    from ftib.data.world import scene as S
    from ftib.data.world.build import cell_words

    d = tmp_path / "cells"
    (d / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = S.sample_scene(rng, 1, 6, 3)
        S.render(s, size).save(d / f"images/{i:04d}.png")
        out.append(cell_words(s, f"c{i}", f"images/{i:04d}.png"))
    out += rows or []
    (d / "cells.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
    return d / "cells.jsonl"


def test_bad_cells_files_fail_naming_the_row(tmp_path):
    good = _scenes_file(tmp_path, 2)
    rows = load_cells(good)
    assert rows[0]["grid"] == [3, 3] and rows[0]["cells"][0]["words"].keys() == {"object", "colour"}
    for bad, match in [
        ({"grid": [3]}, r"row 3.*'grid' must be \[rows, cols\]"),
        ({"cells": [{"row": 3, "col": 0, "words": {"object": "花"}}]}, r"row 3.*outside the 3x3 grid"),
        ({"cells": [{"row": 0, "col": 0, "words": {"object": "花"}}] * 2}, r"row 3.*listed twice"),
        ({"cells": [{"row": 0, "col": 0, "words": {"object": ""}}]}, r"row 3.*non-empty words"),
        ({"cells": [{"row": 0, "col": 0}]}, r"row 3.*row, col and words"),
        ({"image": "images/missing.png"}, r"row 3.*missing\.png"),
    ]:
        row = {"id": "x", "image": "images/0000.png", "grid": [3, 3], "cells": []} | bad
        path = _scenes_file(tmp_path, 2, rows=[row])
        with pytest.raises(FtibError, match=match):
            load_cells(path)


def test_ground_config_is_checked(tmp_path):
    for config, match in [
        ({"trainable": {"mode": "full", "train_vision": True}}, r"trainable\.mode must be 'none'"),
        ({"trainable": {"mode": "none", "train_vision": False, "train_merger": False}}, r"nothing would train"),
        ({"min_cell_share": 0}, r"min_cell_share must lie in \(0, 1\]"),
        ({"held_out": -1}, r"held_out must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_recipe_from(tmp_path, {"name": "ground", "config": config})


def test_ground_trains_only_vision_and_ties_tokens_to_words(tmp_path):
    """On the base's starting point (one merged token per cell at its 48-pixel budget,
    one token per Han character, so most words are two tokens): the loss falls, held-out
    cell accuracy rises from about chance, and only the vision tower and merger change.
    (150 steps: colour words share their second character, 色, so their targets, the
    means of their tokens, are closer than single tokens were; 60 steps no longer did.)"""
    model = "ftibworld-base-init"
    before = state(model)
    path = _scenes_file(tmp_path, 160)
    rec, ckpt = run_stage(tmp_path, "ground", {"data": str(path), "held_out": 32,
                                               "train": {"max_steps": 150, "batch_size": 16, "lr": 3e-3,
                                                         "warmup_steps": 2}}, model=model)
    m = rec["metrics"]
    assert m["loss_last_10pct"] < m["loss_first_10pct"] - 0.5, m
    # the base's tokenizer has no merge across Han characters: the 12 words of two or more
    # characters are several tokens (their target is the mean of their tokens' embeddings)
    assert m["words/object"] == 10 and m["words/colour"] == 6 and m["words_multi_token"] == 12
    assert m["tokens_astride_cells"] == 0
    # chance among 10 objects / 6 colours (plus empty); the untrained tower is near it
    assert m["heldout_acc/colour"] > max(0.5, m["heldout_acc/colour_before"] + 0.3), m
    assert m["heldout_acc/object"] > m["heldout_acc/object_before"] + 0.15, m
    diff = changed(before, state(ckpt))
    assert diff and all(".visual." in k for k in diff), sorted(k for k in diff if ".visual." not in k)[:5]


def test_ground_needs_a_vlm_and_a_usable_file(tmp_path):
    path = _scenes_file(tmp_path, 4)
    with pytest.raises(FtibError, match="text-only"):
        run_stage(tmp_path, "ground", {"data": str(path), "train": {"max_steps": 1}}, model="tiny-qwen3",
                  run_dir=tmp_path / "r1")
    with pytest.raises(FtibError, match=r"held_out=4 leaves no training images of 4"):
        run_stage(tmp_path, "ground", {"data": str(path), "held_out": 4, "train": {"max_steps": 1}},
                  run_dir=tmp_path / "r2")
    (tmp_path / "cells/images/0001.png").write_bytes(b"not a png")
    with pytest.raises(FtibError, match=r"0001\.png"):
        run_stage(tmp_path, "ground", {"data": str(path), "train": {"max_steps": 1}}, run_dir=tmp_path / "r3")
