"""The GRPO monitors: each one triggered by a tiny run built to trip it, the stop path,
and the range checks of their thresholds.

The runs use ``ftibworld-base`` on short questions (the world's general zh/en QA, which
it answers in a few tokens, so a reward that pays for length lengthens them) or the random
tiny preset, a few steps each.
"""

import json
import logging

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ftib.core import ConfigError, FtibError, build_config
from ftib.core.pipeline import Pipeline
from ftib.core.recipe import load_recipe
from ftib.core.train import safe_load
from ftib.stages.grpo import GRPOConfig
from ftib.stages.grpo_monitors import Monitors, MonitorsConfig, mixed_language_share, split_heldout


def run_grpo(tmp_path, config, model="tiny-qwen3-vl", name="run"):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(yaml.safe_dump({"model": model, "stages": [{"name": "grpo", "config": config}]}))
    manifest = Pipeline(load_recipe(recipe), tmp_path / name, progress=False).run()
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return manifest["stages"]["grpo"], [r for r in rows if "reward_mean" in r]


# the length alarm's threshold in the runs below (step 1 is ~2.4x step 0's length)
LENGTH_MAX = 1.8
# A reward that pays for length: >= 25 characters (ftibworld-base answers in a few
# tokens; one step at this lr takes every completion to max_new_tokens). Measured on the
# base shipped 2026-12-04: step 0 pays 44 % of completions (10 tokens on average), step 1
# all of them (24 tokens).
PAYS_FOR_LENGTH = {"name": "format", "weight": 1.0, "config": {"pattern": "(?s).{25,}"}}
# Weight 0, so it does not train: a "similarity" that falls as completions lengthen
# (1 - characters / 200), the held-out metric of the run below.
SHORT_IS_SIMILAR = {"name": "length", "weight": 0.0, "config": {"min_chars": 0, "max_chars": 0, "slack": 200}}



def _short_questions(folder) -> str:
    """The tiny world's general QA prompts (zh and en: "33加31等于几？") as a prompts folder
    (``translation.jsonl`` with each record's own ``prompt``). ftibworld-base answers them
    in a few tokens ("不是。", "Three."), while on Tibetan prompts it writes Chinese until
    ``max_new_tokens``."""
    from ftib.data.sources import resolve

    rows = [json.loads(x) for x in resolve("ftibworld:tiny", "general/train.jsonl").read_text().splitlines()]
    (folder / "translation.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "source": r["prompt"], "reference": r["answer"], "prompt": r["prompt"]},
                   ensure_ascii=False) + "\n" for i, r in enumerate(x for x in rows if x.get("prompt"))),
        encoding="utf-8")
    return str(folder)


BASE = {"tasks": ["translation"], "group_size": 4, "max_new_tokens": 24,
        # measured on the shipped base (2026-12-03): at 2.0 step 0's completions are ~10
        # tokens and half of them are long enough to be paid, so the groups' rewards vary;
        # one step takes every completion to max_new_tokens (24) and every group's reward
        # to 1.
        "temperature": 2.0,
        "train": {"batch_size": 4, "lr": 5.0e-2, "schedule": "constant", "max_steps": 3}}


@pytest.fixture(scope="module")
def base_cfg(tmp_path_factory):
    """BASE on the short questions (ftibworld-base's runs)."""
    return {**BASE, "data": _short_questions(tmp_path_factory.mktemp("short_questions"))}


# Zero-variance groups: paying for exactly "不是。" at temperature 1.5 (step 0: 56 % of
# completions, so half the groups vary). One step at this lr also penalises "不是" + end
# of text: the model stops ending its answer, every completion runs long (22 of 24
# tokens, measured 2026-12-04), none is paid, and no group has any reward variance left.
def collapse(base_cfg):
    return {**base_cfg, "temperature": 1.5,
            "rewards": [{"name": "format", "weight": 1.0, "config": {"pattern": "不是。"}}],
            "monitors": {"entropy_ratio_min": 0.95}, "train": {**base_cfg["train"], "max_steps": 2}}


@pytest.fixture(scope="module")
def length_run(tmp_path_factory, base_cfg):
    """ftibworld-base with a reward that pays for length, 3 steps, held-out every 2."""
    tmp = tmp_path_factory.mktemp("length_run")
    return run_grpo(tmp, {**base_cfg, "rewards": [PAYS_FOR_LENGTH, SHORT_IS_SIMILAR],
                          "monitors": {"semantic_reward": "length", "heldout_prompts": 8, "heldout_every": 2,
                                       "length_ratio_max": LENGTH_MAX, "entropy_ratio_min": 0.95}},
                    model="ftibworld-base")


def test_length_blow_up_alarms(length_run):
    _, rows = length_run
    assert "monitor/length_ratio" not in rows[0]  # step 0 is the cold-start reference
    assert rows[1]["monitor/length_ratio"] > LENGTH_MAX and rows[1]["monitor/length_alarm"] == 1.0
    assert rows[1]["completion_len_mean"] == pytest.approx(rows[1]["monitor/length_ratio"]
                                                           * rows[0]["completion_len_mean"])


def test_reward_up_while_heldout_similarity_down_alarms(length_run):
    """Held-out similarity at the start (step 0's row) and after every 2 steps (step 1):
    it fell while the reward rose from step 0 to step 1."""
    rec, rows = length_run
    start = rows[0]["monitor/heldout_similarity_start"]
    assert "monitor/heldout_similarity" not in rows[0] and "monitor/heldout_similarity" not in rows[2]
    assert rows[1]["monitor/heldout_similarity"] < start - 0.05
    assert rows[1]["reward_mean"] > rows[0]["reward_mean"]
    assert rows[1]["monitor/heldout_alarm"] == 1.0
    assert rec["metrics"]["monitor_heldout_alarm_steps"] == 1.0
    assert rec["metrics"]["prompts_heldout"] == 8.0  # counted, not silently taken from training


def test_every_long_completion_paid_leaves_no_reward_variance(length_run):
    _, rows = length_run
    # Every completion is long now: every group's reward is 1, no learning signal.
    assert rows[1]["zero_std_groups"] == 1.0 and rows[1]["monitor/zero_std_alarm"] == 1.0
    assert rows[0]["zero_std_groups"] < 0.95 and rows[0]["monitor/zero_std_alarm"] == 0.0


def test_zero_variance_groups_alarm(tmp_path, base_cfg):
    _, rows = run_grpo(tmp_path, collapse(base_cfg), model="ftibworld-base")
    assert rows[0]["reward_mean"] > 0 and rows[0]["monitor/zero_std_alarm"] == 0.0
    assert rows[1]["zero_std_groups"] == 1.0 and rows[1]["monitor/zero_std_alarm"] == 1.0
    assert rows[1]["reward_mean"] == 0.0
    assert rows[1]["completion_len_mean"] > 5 * rows[0]["completion_len_mean"]


def test_entropy_collapse_alarms(tmp_path, base_cfg):
    """Paying for >= 30 characters: the model learns to run on with ever more certain
    tokens (token entropy at step 1 0.94x the cold start's, at step 2 0.33x; measured
    2026-12-04), so the alarm (below 0.8x) is off at step 1 and on at step 2."""
    cfg = {**base_cfg, "rewards": [{**PAYS_FOR_LENGTH, "config": {"pattern": "(?s).{30,}"}}, SHORT_IS_SIMILAR],
           "monitors": {"semantic_reward": "length", "heldout_prompts": 8, "heldout_every": 2,
                        "entropy_ratio_min": 0.8}}
    _, rows = run_grpo(tmp_path, cfg, model="ftibworld-base")
    assert "monitor/entropy_ratio" not in rows[0]  # step 0 is the reference
    assert rows[1]["monitor/entropy_ratio"] > 0.8 and rows[1]["monitor/entropy_alarm"] == 0.0
    assert rows[2]["monitor/entropy_ratio"] < 0.8 and rows[2]["monitor/entropy_alarm"] == 1.0


def test_heldout_prompts_are_not_trained_on():
    pool = [{"id": str(i)} for i in range(10)]
    train, held = split_heldout(pool, 3)
    assert [p["id"] for p in held] == ["0", "3", "6"] and len(train) == 7
    assert not {p["id"] for p in train} & {p["id"] for p in held}
    with pytest.raises(FtibError, match="heldout_prompts=10 would hold out all 10"):
        split_heldout(pool, 10)


def test_kl_spike_and_clip_fraction_alarm(tmp_path):
    """beta > 0 and a second pass over each rollout at a large lr: the KL to the reference
    and the clipped share both leave 0 at step 1."""
    _, rows = run_grpo(tmp_path, {
        "data": "ftibworld:tiny", "group_size": 4, "max_new_tokens": 6, "beta": 0.04, "num_iterations": 2,
        "loss_type": "grpo", "rewards": [{"name": "language", "config": {"mode": "fraction", "scripts": ["han"]}}],
        "monitors": {"kl_max": 1.0e-3, "clip_max": 0.01},
        "train": {"max_steps": 2, "batch_size": 2, "lr": 1.0e-1}})
    assert rows[0]["monitor/kl_alarm"] == 0.0 and rows[0]["monitor/clip_alarm"] == 0.0  # ratio 1, policy = ref
    assert rows[1]["kl"] > 1.0e-3 and rows[1]["monitor/kl_alarm"] == 1.0
    assert rows[1]["clip_ratio_region"] > 0.01 and rows[1]["monitor/clip_alarm"] == 1.0


def test_mixed_language_hacking_alarms(tmp_path, caplog):
    """A "semantic" term that pays whatever the language (format: any text) on headlines,
    whose target is Tibetan, from the random tiny model, which writes none: every
    completion is a hack."""
    with caplog.at_level(logging.WARNING):
        _, rows = run_grpo(tmp_path, {
            "data": "ftibworld:tiny", "tasks": ["headline"], "group_size": 2, "max_new_tokens": 4,
            "rewards": [{"name": "format", "config": {}}], "monitors": {"semantic_reward": "format"},
            "train": {"max_steps": 1, "batch_size": 2}})
    assert rows[0]["monitor/mixed_language_share"] == 1.0 and rows[0]["monitor/mixed_language_alarm"] == 1.0
    assert "GRPO monitor mixed_language alarm at step 0" in caplog.text


def test_mixed_language_share_counts_high_semantic_off_language():
    sem = torch.tensor([0.9, 0.9, 0.2, float("nan")])
    shares = [0.0, 1.0, 0.0, 0.0]
    # only the first: high and off-language (the third is low, the fourth unscored)
    assert mixed_language_share(sem, shares, semantic_min=0.5, language_min_share=0.5) == 0.25


def test_length_collapse_alarms():
    """Collapse is the other side of the same ratio (the tiny models cannot be made to
    stop early in a few steps): 2 tokens against a cold start of 10."""
    m = Monitors(MonitorsConfig(length_ratio_min=0.5), beta=0.0, reward_names=["language"], heldout=None,
                 logger=logging.getLogger("t"))
    history = [{"reward_mean": 0.1, "completion_len_mean": 10.0}]
    check = m.after_step(1, {"reward_mean": 0.2, "completion_len_mean": 2.0}, history)
    assert check.metrics["monitor/length_ratio"] == 0.2 and check.metrics["monitor/length_alarm"] == 1.0
    assert check.stop is None  # on_alarm: warn
    m = Monitors(MonitorsConfig(length_ratio_min=0.5, on_alarm="stop", patience=2), beta=0.0,
                 reward_names=["language"], heldout=None, logger=logging.getLogger("t"))
    assert m.after_step(1, {"reward_mean": 0.2, "completion_len_mean": 2.0}, history).stop is None  # patience
    history.append({"reward_mean": 0.2, "completion_len_mean": 2.0, "monitor/length_alarm": 1.0})
    stop = m.after_step(2, {"reward_mean": 0.2, "completion_len_mean": 2.0}, history).stop
    assert stop is not None and "length" in stop and "step 2" in stop


def _assert_weights_equal(final_dir, good):
    final = load_file(final_dir / "model.safetensors")
    common = [k for k in good if k in final]
    assert len(common) > 10
    for k in common:
        torch.testing.assert_close(final[k].float(), good[k].float(), rtol=0, atol=0, msg=k)


def test_stop_ends_the_stage_at_the_last_good_checkpoint(tmp_path):
    """on_alarm: stop, KL rising under a large lr (0 at step 0, then over 0.3 from step 2):
    the alarm at step 2 ends the stage after that step. Step 2's rollouts came from the
    weights of step 1's checkpoint, so the last good one is step 0's: the stage's output
    holds its weights, and monitor_stop.json names the monitor and the step."""
    rec, rows = run_grpo(tmp_path, {
        "data": "ftibworld:tiny", "group_size": 4, "max_new_tokens": 8, "beta": 0.04,
        "rewards": [{"name": "length", "config": {"min_chars": 0, "max_chars": 1, "slack": 40}}],
        "monitors": {"on_alarm": "stop", "kl_max": 0.3},
        # measured: KL 0, 0.06, 1.5 at steps 0-2 (lr 2e-2 crossed 0.3 only at step 3)
        "train": {"max_steps": 6, "batch_size": 4, "lr": 3.0e-2, "schedule": "constant", "checkpoint_every": 1}})
    assert rec["status"] == "completed"
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[1]["kl"] < 0.3 < rows[2]["kl"]
    assert rec["metrics"]["monitor_stop_step"] == 2.0 and rec["metrics"]["steps"] == 3.0
    stage_dir = tmp_path / "run" / "stages" / "grpo"
    stop = json.loads((stage_dir / "monitor_stop.json").read_text())
    assert stop["step"] == 2 and "GRPO monitor kl alarm at step 2" in stop["reason"]
    assert stop["output_weights"].endswith("step-000000")
    # the alarming step's checkpoint is not written
    assert sorted(p.name for p in (stage_dir / "steps").iterdir()) == ["step-000000", "step-000001"]
    _assert_weights_equal(stage_dir / "final", safe_load(stage_dir / "steps" / "step-000000" / "trainable.pt"))


@pytest.mark.parametrize("checkpoint_every", [1, 0])
def test_stop_before_any_good_checkpoint_ends_at_the_starting_weights(tmp_path, checkpoint_every, base_cfg):
    """The length alarm fires at step 1 (ftibworld-base, a reward that pays for length):
    step 0's checkpoint, if written, holds the weights that rolled out step 1, so the
    output is the stage's starting weights either way."""
    rec, rows = run_grpo(tmp_path, {
        **base_cfg, "rewards": [PAYS_FOR_LENGTH, SHORT_IS_SIMILAR],
        # the training prompts of the length run (8 held out); only the length alarm
        # stops (every group's reward is 1 at step 1 too)
        "monitors": {"on_alarm": "stop", "length_ratio_max": LENGTH_MAX, "semantic_reward": "length",
                     "heldout_prompts": 8, "heldout_every": 100, "zero_std_max": None,
                     "mixed_language_max": None},
        "train": {**BASE["train"], "max_steps": 4, "checkpoint_every": checkpoint_every}}, model="ftibworld-base")
    assert [r["step"] for r in rows] == [0, 1] and rec["metrics"]["monitor_stop_step"] == 1.0
    stage_dir = tmp_path / "run" / "stages" / "grpo"
    stop = json.loads((stage_dir / "monitor_stop.json").read_text())
    assert "GRPO monitor length alarm at step 1" in stop["reason"] and "starting weights" in stop["output_weights"]
    from ftib.models.presets import SHIPPED

    _assert_weights_equal(stage_dir / "final", load_file(SHIPPED["ftibworld-base"] / "model.safetensors"))


@pytest.mark.parametrize("monitors, match", [
    ({"kl_max": 0}, "kl_max must be > 0"),
    ({"kl_max": float("inf")}, "kl_max"),
    ({"mixed_language_max": 1.5}, r"mixed_language_max must be in \[0, 1\)"),
    ({"zero_std_max": -0.1}, r"zero_std_max must be in \[0, 1\)"),
    ({"clip_max": 1.0}, r"clip_max must be in \[0, 1\)"),
    ({"length_ratio_min": 0}, r"length_ratio_min must be in \(0, 1\)"),
    ({"length_ratio_max": 0.9}, "length_ratio_max must be > 1"),
    ({"entropy_ratio_min": 1.2}, r"entropy_ratio_min must be in \(0, 1\)"),
    ({"semantic_min": 2}, r"semantic_min must be in \[-1, 1\]"),
    ({"language_min_share": 0}, r"language_min_share must be in \(0, 1\]"),
    ({"patience": 0}, "patience must be >= 1"),
    ({"reference_steps": 0}, "reference_steps must be >= 1"),
    ({"heldout_every": 0}, "heldout_every must be >= 1"),
    ({"heldout_drop_max": -1}, "heldout_drop_max must be >= 0"),
    ({"on_alarm": "panic"}, "on_alarm"),
    ({"heldout_prompts": 4}, r"monitors.heldout_prompts needs the reward named by semantic_reward \('semantic'\)"),
])
def test_monitor_thresholds_out_of_range_are_config_errors(monitors, match):
    with pytest.raises(ConfigError, match=match):
        build_config(GRPOConfig, {"rewards": [{"name": "language"}], "monitors": monitors}, where="grpo")


def test_monitors_off_by_none():
    cfg = build_config(GRPOConfig, {"rewards": [{"name": "language"}],
                                    "monitors": {"kl_max": None, "clip_max": None}}, where="grpo")
    m = Monitors(cfg.monitors, beta=0.1, reward_names=["language"], heldout=None, logger=logging.getLogger("t"))
    assert not m.on["kl"] and not m.on["clip"] and not m.on["mixed_language"] and m.on["length"]


def test_time_breakdown_adds_up_to_the_step_time(tmp_path):
    """Generation, rewards and reference log-probs run in the loop's collate but are not
    data time: with two micro-batches (phase times summed over them) the phases add up to
    the step time, up to the loop's bookkeeping."""
    _, rows = run_grpo(tmp_path, {
        "data": "ftibworld:tiny", "group_size": 2, "max_new_tokens": 4, "beta": 0.04,
        "rewards": [{"name": "language", "config": {"mode": "fraction", "scripts": ["han"]}}],
        "train": {"max_steps": 2, "batch_size": 2, "grad_accum": 2}})
    for r in rows:
        phases = (r["data_time_s"] + r["time/generation_s"] + r["time/reward_s"] + r["time/ref_logps_s"]
                  + r["time/forward_s"] + r["time/backward_s"] + r["time/optimizer_s"])
        assert r["time/ref_logps_s"] > 0 and r["data_time_s"] < r["time/generation_s"], r
        assert phases <= r["step_time_s"] * 1.001 and phases >= 0.9 * r["step_time_s"], (phases, r["step_time_s"])


def test_a_resumed_run_monitors_as_an_uninterrupted_one(tmp_path, caplog, base_cfg):
    """The monitors read only the step's metrics and the loop's history (restored from
    the step checkpoint): re-running an interrupted stage from step 0's checkpoint logs
    the same monitor values and alarms for steps 1 and 2 (held-out start included)."""
    config = {**base_cfg, "rewards": [PAYS_FOR_LENGTH, SHORT_IS_SIMILAR],
              "monitors": {"semantic_reward": "length", "heldout_prompts": 4, "heldout_every": 2,
                           "length_ratio_max": LENGTH_MAX},
              "train": {**BASE["train"], "checkpoint_every": 1, "keep_checkpoints": 3}}
    _, rows = run_grpo(tmp_path, config, model="ftibworld-base")
    run = tmp_path / "run"
    # Interrupt it after step 0: its later checkpoints and output gone, the stage "running".
    import shutil

    for d in ("step-000001", "step-000002"):
        shutil.rmtree(run / "stages" / "grpo" / "steps" / d)
    shutil.rmtree(run / "stages" / "grpo" / "final")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["grpo"]["status"] = "running"
    (run / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="ftib.train"):
        Pipeline(load_recipe(tmp_path / "run.yaml"), run, progress=False).run()
    assert "resuming at step 1 of 3" in caplog.text
    resumed = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in resumed if "reward_mean" in r]
    assert [r["step"] for r in resumed] == [0, 1, 2]
    for a, b in zip(rows[1:], resumed[1:]):
        def monitors(r):
            return {k: v for k, v in r.items() if k.startswith("monitor/") and k != "monitor/time_s"}

        assert monitors(a) and monitors(a) == monitors(b), (a["step"], monitors(a))
    assert resumed[1]["monitor/heldout_alarm"] == rows[1]["monitor/heldout_alarm"] == 1.0
