"""The GRPO stage on the tiny preset and FTibWorld (tiny)."""

import json

import pytest
import torch
import yaml

from ftib.core import ConfigError, FtibError
from ftib.core.pipeline import Pipeline
from ftib.core.recipe import load_recipe
from ftib.stages.grpo import completion_mask

LANG_ONLY = [{"name": "language", "weight": 1.0, "config": {"mode": "fraction", "scripts": ["han"]}}]


def run_grpo(tmp_path, config, name="run"):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({"model": "tiny-qwen3-vl", "stages": [{"name": "grpo", "config": config}]}))
    manifest = Pipeline(load_recipe(recipe), tmp_path / name, progress=False).run()
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return manifest["stages"]["grpo"], rows


def test_completion_mask_stops_after_first_stop_token():
    ids = torch.tensor([[5, 6, 9, 7, 9], [9, 1, 1, 1, 1], [1, 2, 3, 4, 5]])
    assert completion_mask(ids, {9}, 0).tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_reward_rises_on_both_tasks(tmp_path):
    """Language-consistency reward, per task target (translation -> Chinese, headline ->
    Tibetan): the mean reward of the last 20% of steps beats the first 20%."""
    rec, rows = run_grpo(tmp_path, {
        "data": "ftibworld:tiny", "tasks": ["translation", "headline"], "group_size": 4, "max_new_tokens": 8,
        "rewards": [{"name": "language", "config": {"mode": "fraction", "scripts": ["han"]}}],
        "train": {"max_steps": 30, "batch_size": 4, "lr": 3.0e-3, "warmup_steps": 0, "schedule": "constant"}})
    m = rec["metrics"]
    assert m["reward_last_20pct"] > m["reward_first_20pct"] + 0.1, m
    logged = rows[-1]
    for key in ("reward_mean", "reward_std", "zero_std_groups", "reward/language_mean", "kl", "clip_ratio_region",
                "completion_len_mean", "target_language_share", "time/generation_s", "time/reward_s",
                "time/loss_fwd_s", "step_time_s"):
        assert key in logged, key


def test_reference_kernels_give_the_same_update(tmp_path):
    """Swapping the fused kernels for their eager references inside the stage gives the
    same parameters after two steps (same seed, same rollouts). Adam's eps is set to 1 so
    the update is smooth in the gradient (with eps=1e-8 the first Adam step is lr*sign(g),
    which turns float rounding of near-zero gradients into full-size differences)."""
    base = {"data": "ftibworld:tiny", "group_size": 3, "max_new_tokens": 6, "beta": 0.05, "rewards": LANG_ONLY,
            "loss_type": "grpo", "train": {"max_steps": 2, "batch_size": 2, "lr": 1.0e-1, "eps": 1.0}}
    _, _ = run_grpo(tmp_path, {**base, "kernel_impl": "auto"}, "fused")
    _, _ = run_grpo(tmp_path, {**base, "kernel_impl": "reference"}, "ref")
    from safetensors.torch import load_file

    a = load_file(tmp_path / "fused/stages/grpo/final/model.safetensors")
    b = load_file(tmp_path / "ref/stages/grpo/final/model.safetensors")
    from ftib.models.presets import preset_dir

    start = load_file(preset_dir("tiny-qwen3-vl") / "model.safetensors")
    assert a.keys() == b.keys()
    moved = [k for k in a if not torch.equal(a[k], start[k])]
    assert len(moved) > 10  # the update is not trivially zero
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_semantic_reward_with_the_ftibworld_encoder(tmp_path):
    rec, rows = run_grpo(tmp_path, {
        "data": "ftibworld:tiny", "group_size": 2, "max_new_tokens": 6,
        "rewards": [{"name": "semantic", "weight": 1.5, "config": {"model": "ftibworld-encoder"}},
                    {"name": "language", "weight": 1.0, "config": {"scripts": ["han"]}}],
        "train": {"max_steps": 1, "batch_size": 2}})
    assert rec["status"] == "completed"
    assert "reward/semantic_mean" in rows[-1] and -1.0 <= rows[-1]["reward/semantic_mean"] <= 1.0


@pytest.mark.parametrize(
    "config, error, match",
    [
        ({"group_size": 1}, ConfigError, "group_size must be >= 2"),
        ({"rewards": [{"name": "semantc"}]}, ConfigError, "did you mean 'semantic'"),
        ({"rewards": [{"name": "language", "config": {"scripts": ["klingon"]}}]}, ConfigError, "scripts"),
        ({"max_prompt_length": 4}, FtibError, "more than max_prompt_length=4"),
        ({"rewards": [{"name": "semantic", "config": {"model": "/no/such/encoder"}}]}, ConfigError,
         "does not exist"),
    ],
)
def test_bad_grpo_inputs(tmp_path, config, error, match):
    base = {"data": "ftibworld:tiny", "group_size": 2, "max_new_tokens": 4, "rewards": LANG_ONLY,
            "train": {"max_steps": 1, "batch_size": 2}}
    with pytest.raises(error, match=match):
        run_grpo(tmp_path, {**base, **config})


def test_nan_reward_is_an_error(tmp_path, monkeypatch):
    from ftib.stages import rewards

    monkeypatch.setattr(rewards.LanguageReward, "__call__",
                        lambda self, p, c, r, m: torch.full((len(c),), float("nan")))
    with pytest.raises(FtibError, match="reward 'language' returned 4 non-finite"):
        run_grpo(tmp_path, {"data": "ftibworld:tiny", "group_size": 2, "max_new_tokens": 4, "rewards": LANG_ONLY,
                            "train": {"max_steps": 1, "batch_size": 2}})
