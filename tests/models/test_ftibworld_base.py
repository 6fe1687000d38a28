"""The shipped `ftibworld-base` preset: checksums, bad names, its tokenizer, its Chinese scores.

The stored scores (tests/assets/ftibworld_base_zh_subset.json) were produced by the command
recorded in that file (``python -m ftib.evals.shipped_scores ...``); the recipe's loss
curve (tests/assets/ftibworld_base_curve.json) by the command recorded there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ftib.core.errors import FtibError
from ftib.models import presets

ASSETS = Path(__file__).resolve().parents[1] / "assets"
NAME = "ftibworld-base"


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped folder that the test may damage."""
    dest = tmp_path / NAME
    shutil.copytree(presets.SHIPPED[NAME], dest)
    monkeypatch.setitem(presets.SHIPPED, NAME, dest)
    return dest


def test_shipped_preset_passes_its_checksums_and_is_small():
    folder = presets.preset_dir(NAME)
    assert folder == presets.SHIPPED[NAME]
    listed = [ln.split("  ", 1)[1] for ln in (folder / presets.CHECKSUMS).read_text().splitlines() if ln]
    for f in ("model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json", "README.md"):
        assert f in listed, f
    assert sum((folder / f).stat().st_size for f in listed) <= 20 * 2**20


def test_a_corrupt_shipped_file_is_an_error_naming_it(shipped_copy):
    path = shipped_copy / "tokenizer.json"
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(FtibError, match=r"tokenizer\.json fails its checksum"):
        presets.preset_dir(NAME)


def test_a_missing_shipped_file_is_an_error_naming_it(shipped_copy):
    (shipped_copy / "model.safetensors").unlink()
    with pytest.raises(FtibError, match=r"model\.safetensors is missing"):
        presets.preset_dir(NAME)


def test_shipped_preset_takes_no_overrides():
    with pytest.raises(FtibError, match="shipped pretrained weights"):
        presets.preset_dir(NAME, hidden_size=64)


@pytest.mark.parametrize("typo,meant", [("ftibworld-bse", "ftibworld-base"), ("tiny-qwen3-v", "tiny-qwen3-vl")])
def test_a_preset_typo_lists_the_closest_names(typo, meant):
    from ftib.models import load_bundle

    with pytest.raises(FtibError, match=f"did you mean '{meant}'") as err:
        load_bundle(typo)
    assert "tiny-qwen3" in str(err.value) and "ftibworld-base" in str(err.value)


def test_base_tokenizer_has_no_tibetan_and_pays_bytes_for_it():
    from ftib.models.ship import tokenizer_figures
    from transformers import AutoTokenizer

    folder = presets.preset_dir(NAME)
    tok = AutoTokenizer.from_pretrained(folder)
    vocab = [tok.convert_tokens_to_string([t]) for t in tok.get_vocab()]
    assert not any(any("\u0f00" <= c <= "\u0fff" for c in v) for v in vocab)
    figures = tokenizer_figures(folder)
    # byte fallback: a syllable of ~3-4 letters (3 bytes each) plus tsheg
    assert figures["bo_tokens_per_syllable"] > 6, figures
    # no merge crosses two Han characters (preset `tokenizer_split_han`): a Chinese
    # question is its characters, as Qwen cuts Chinese into words of 1-3 characters, not
    # one fused token (the base of 2026-12-03 had `这张图里有树吗` as one token)
    assert 0.9 <= figures["zh_tokens_per_char"] <= 1.05, figures  # (a rare character is bytes)
    assert len(tok("这张图里有树吗", add_special_tokens=False)["input_ids"]) == 7


def test_shipped_model_chinese_scores_on_a_subset(tmp_path_factory):
    """The shipped weights give the stored Chinese scores (within one item per score)."""
    from ftib.data.world import build_world
    from ftib.evals.shipped_scores import subset_scores

    stored = json.loads((ASSETS / "ftibworld_base_zh_subset.json").read_text())
    world = tmp_path_factory.mktemp("world") / "w"
    build_world(world, size="tiny", seed=0)
    got = subset_scores(world, NAME, "zh")
    for bench, want in stored["scores"].items():
        assert got[bench]["items"] == want["items"], bench
        for key, value in want.items():
            if key == "items":
                continue
            n = want["items"] / (3 if bench == "pope" else 4 if bench == "mmbench" else 1)
            assert abs(got[bench][key] - value) <= 1.0 / n + 1e-9, (bench, key, got[bench][key], value,
                                                                   stored["command"])


def _manifest(pope: float, circular: float | None) -> dict:
    evals = {"text/pope_zh": {"status": "completed", "name": "pope",
                              "metrics": {f"{s}/accuracy": pope for s in ("random", "popular", "adversarial")}}}
    if circular is not None:
        evals["text/mmbench_zh"] = {"status": "completed", "name": "mmbench", "metrics": {"circular": circular}}
    return {"config": {"model": {"name_or_path": "ftibworld-base-init"},
                       "stages": [{"id": "text", "name": "cpt", "config": {"data": "d", "train": {}}}],
                       "evaluators": [{"id": "pope_zh", "name": "pope", "config": {"lang": "zh", "limit": 50}},
                                      {"id": "mmbench_zh", "name": "mmbench", "config": {"lang": "zh"}},
                                      {"id": "pope_bo", "name": "pope", "config": {"lang": "bo"}}]},
            "stages": {"text": {"status": "completed", "metrics": {}}}, "evals": evals, "seed": 0,
            "versions": {}, "platform": {}, "recipe_file": "/somewhere/checkout/configs/ftibworld-base.yaml"}


def test_model_card_states_each_target_from_the_chinese_scores():
    from ftib.models.ship import render_card, target_status

    rows = {label: (measured, met) for label, measured, met in target_status(_manifest(0.96, 0.5), "text")}
    assert rows["POPE zh >= 95 on every split"] == ("96.0 / 96.0 / 96.0 (limit 50)", True)
    assert rows["MMBench zh CircularEval >= 80"] == ("50.0", False)
    assert rows["BinaryVQA zh >= 90"] == ("-", None)
    tokens = dict.fromkeys(("bo_tokens_per_syllable", "bo_syllables", "extended_added",
                            "bo_tokens_per_syllable_extended", "zh_tokens_per_char"), 1.0)
    card = render_card(NAME, _manifest(0.94, None), "text", 10, tokens, notes="measured elsewhere")
    assert "| POPE zh >= 95 on every split | 94.0 / 94.0 / 94.0 (limit 50) | no |" in card
    assert "| MMBench zh CircularEval >= 80 | - | not measured |" in card
    assert "**Not met** (or not measured): POPE zh" in card
    assert card.rstrip().endswith("## Notes\n\nmeasured elsewhere")
    assert "`ftib run configs/ftibworld-base.yaml`" in card
    # what the wall time was measured on comes from the stage records
    assert "min** (CPU; cores and torch threads not recorded by this run)" in card
    recorded = _manifest(0.94, None)
    recorded["stages"]["text"].update(cpus=2, cpu_threads=1)
    assert "min** (2 CPU cores, 1 torch thread)" in render_card(NAME, recorded, "text", 10, tokens)


def test_model_limits_of_the_shipped_base_come_from_its_config():
    from ftib.models.bundle import model_limits

    config = json.loads((presets.SHIPPED[NAME] / "config.json").read_text())
    limits = model_limits(NAME)
    assert limits.vocab == config["text_config"]["vocab_size"] and limits.layers == config["text_config"]["num_hidden_layers"]
    with pytest.raises(FtibError, match="shipped pretrained weights"):
        model_limits(NAME, {"hidden_size": 64})


@pytest.mark.parametrize("recipe", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_packaged_recipe_on_a_preset_passes_the_run_preflight(recipe):
    """`ftib run` checks lengths against the model before any work; a recipe on the
    shipped base failed there (its preset has no build config) while the pipeline,
    which the stage tests drive directly, ran it."""
    from ftib.core.cli import _preflight
    from ftib.core.recipe import load_recipe

    loaded = load_recipe(recipe)
    if not presets.is_preset(str(loaded.model.name_or_path)):
        pytest.skip(f"{recipe.name}: a hub checkpoint (tests/realpath covers it)")
    _preflight(loaded)
