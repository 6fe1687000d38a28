"""Checkpoint selection of GRPO under an alignment-tax budget (ftib.stages.grpo_select).

Tiny runs of a few steps: with a scripted metric and tax (the stage's measurements
replaced, the weights real) the choice is checked against the script; with the real
measurements, a resumed run chooses as an uninterrupted one; LoRA measures its tax
against the adapter-disabled base.
"""

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from ftib.core import ConfigError, build_config
from ftib.core.train import safe_load
from ftib.stages import grpo
from ftib.stages.grpo import GRPOConfig
from ftib.stages.grpo_select import Measure, best_upto

from .test_grpo_monitors import run_grpo


# A deterministic "similarity" that does not train (weight 0): 1 - characters / 200.
SIMILARITY = {"name": "length", "weight": 0.0, "config": {"min_chars": 0, "max_chars": 0, "slack": 200}}
BASE = {"data": "ftibworld:tiny", "group_size": 2, "max_new_tokens": 6,
        "rewards": [{"name": "language", "config": {"mode": "fraction", "scripts": ["han"]}}, SIMILARITY],
        "train": {"max_steps": 4, "batch_size": 2, "lr": 5.0e-2, "checkpoint_every": 1, "keep_checkpoints": 4}}
SELECT = {"metric": "similarity", "every": 1, "reward": "length", "heldout_prompts": 4, "tax_texts": 4}


def _script(monkeypatch, values):
    """Replace the stage's two measurements by ``values`` (start similarity first, then
    one (similarity, tax) per evaluation), in call order."""
    sims = iter([values[0]] + [s for s, _ in values[1:]])
    taxes = iter([t for _, t in values[1:]])
    real = grpo._selection

    def scripted(*args, **kw):
        sel = real(*args, **kw)
        sel.measure = Measure(score=lambda: next(sims),
                              tax=lambda: (lambda t: {"nll_increase_mean": t, "kl_mean": t / 2})(next(taxes)))
        return sel

    monkeypatch.setattr(grpo, "_selection", scripted)


def _assert_weights_equal(final_dir, weights):
    final = load_file(final_dir / "model.safetensors")
    common = [k for k in weights if k in final]
    assert len(common) > 10
    for k in common:
        torch.testing.assert_close(final[k].float(), weights[k].float(), rtol=0, atol=0, msg=k)


def test_the_best_checkpoint_within_budget_is_the_output(tmp_path, monkeypatch):
    """Step 1 has the best metric but a tax over budget: never chosen; step 2 is the best
    of those within it. The output weights are step 2's (its step checkpoint's too)."""
    _script(monkeypatch, [0.2, (0.3, 0.05), (0.9, 0.5), (0.6, 0.08), (0.5, 0.02)])
    rec, rows = run_grpo(tmp_path, {**BASE, "select": {**SELECT, "max_tax": 0.1}})
    m = rec["metrics"]
    assert m["select/step"] == 2.0 and m["select/similarity"] == 0.6 and m["select/tax"] == 0.08
    assert m["select/none_within_budget"] == 0.0 and m["select/evaluations"] == 4.0
    assert rows[0]["select/similarity_start"] == 0.2
    assert [r["select/within_budget"] for r in rows] == [1.0, 0.0, 1.0, 1.0]
    assert [r["select/best"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert [r["select/similarity"] for r in rows] == [0.3, 0.9, 0.6, 0.5]
    stage = tmp_path / "run" / "stages" / "grpo"
    assert sorted(p.name for p in (stage / "selected").iterdir()) == ["step-000002"]  # only the choice stays
    chosen = safe_load(stage / "selected" / "step-000002" / "trainable.pt")
    step2 = safe_load(stage / "steps" / "step-000002" / "trainable.pt")
    assert chosen.keys() == step2.keys() and all(torch.equal(chosen[k], step2[k]) for k in chosen)
    _assert_weights_equal(stage / "final", chosen)
    sel = json.loads((stage / "selection.json").read_text())
    assert sel["chosen_step"] == 2 and [c["step"] for c in sel["curve"]] == [0, 1, 2, 3]
    assert not sel["curve"][1]["within_budget"]


def test_keep_checkpoints_does_not_rotate_the_choice_away(tmp_path, monkeypatch):
    """keep_checkpoints 1, evaluation every 2 steps (and the last): step 1 is chosen and
    its step checkpoint is gone, its copy in selected/ is the output."""
    _script(monkeypatch, [0.2, (0.8, 0.01), (0.4, 0.01)])
    rec, rows = run_grpo(tmp_path, {**BASE, "select": {**SELECT, "every": 2, "max_tax": 0.1},
                                    "train": {**BASE["train"], "keep_checkpoints": 1}})
    assert rec["metrics"]["select/step"] == 1.0
    assert ["select/similarity" in r for r in rows] == [False, True, False, True]
    stage = tmp_path / "run" / "stages" / "grpo"
    assert sorted(p.name for p in (stage / "steps").iterdir()) == ["step-000003"]
    _assert_weights_equal(stage / "final", safe_load(stage / "selected" / "step-000001" / "trainable.pt"))


def test_none_within_budget_keeps_the_starting_weights(tmp_path, monkeypatch, caplog):
    _script(monkeypatch, [0.2, (0.9, 0.5), (0.8, 0.3)])
    with caplog.at_level(logging.WARNING):
        rec, _ = run_grpo(tmp_path, {**BASE, "select": {**SELECT, "every": 2, "max_tax": 0.1},
                                     "max_drop_share": 1.0, "temperature": 1.5},
                          model="ftibworld-base")
    m = rec["metrics"]
    assert m["select/none_within_budget"] == 1.0 and m["select/step"] == -1.0 and m["select/tax"] == 0.0
    assert m["select/similarity"] == 0.2
    assert "none of the 2 evaluations has nll_increase_mean <= max_tax=0.1" in caplog.text
    stage = tmp_path / "run" / "stages" / "grpo"
    assert not list((stage / "selected").glob("step-*"))
    from ftib.models.presets import SHIPPED

    _assert_weights_equal(stage / "final", load_file(SHIPPED["ftibworld-base"] / "model.safetensors"))


def test_a_resumed_run_chooses_as_an_uninterrupted_one(tmp_path, monkeypatch, caplog):
    """Real measurements (greedy held-out similarity, the tax against the starting
    weights). A run killed in step 2's evaluation (after selected/ may have been written,
    before step 2's checkpoint) and resumed from step 1's checkpoint logs the same
    evaluations and makes the same choice as an uninterrupted run."""
    from ftib.stages.grpo_select import Selection

    config = {**BASE, "select": {**SELECT, "max_tax": 100.0}}
    rec, rows = run_grpo(tmp_path, config, name="full")
    assert all(r["select/tax"] > 0 and r["select/kl_mean"] > 0 for r in rows)  # the policy moved
    sims = [r["select/similarity"] for r in rows]
    assert rec["metrics"]["select/step"] == float(sims.index(max(sims)))

    real = Selection.after_step

    def killed_at_step_2(self, step, history):
        out = real(self, step, history)
        if step == 2:
            raise KeyboardInterrupt("killed")
        return out

    monkeypatch.setattr(Selection, "after_step", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run_grpo(tmp_path, config, name="cut")
    monkeypatch.setattr(Selection, "after_step", real)
    with caplog.at_level(logging.INFO, logger="ftib.train"):
        again, resumed = run_grpo(tmp_path, config, name="cut")
    assert "resuming at step 2 of 4" in caplog.text
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]

    def select(r):
        return {k: v for k, v in r.items() if k.startswith("select/") and k != "select/time_s"}

    for a, b in zip(rows, resumed):
        assert select(a) == select(b), a["step"]
    for k in ("select/step", "select/similarity", "select/tax"):
        assert again["metrics"][k] == rec["metrics"][k]
    stage = tmp_path / "cut" / "stages" / "grpo"
    _assert_weights_equal(stage / "final", load_file(tmp_path / "full" / "stages" / "grpo" / "final"
                                                     / "model.safetensors"))


def test_a_monitor_stop_limits_the_candidates_to_the_good_steps(tmp_path, monkeypatch):
    """A monitor (on_alarm: stop, patience 1) stops the stage at step 3: step 2's weights
    rolled out the alarming step, so only steps <= 1 may be chosen, although the scripted
    metric rises with every step; step 3 is not evaluated. monitor_stop.json names the
    choice. (The monitor's verdict is forced at step 3; its own triggers are tested in
    test_grpo_monitors.py.)"""
    from ftib.core.train import StepCheck
    from ftib.stages.grpo_monitors import Monitors

    real = Monitors.after_step

    def alarm_at_3(self, step, metrics, history):
        check = real(self, step, metrics, history)
        return StepCheck(metrics=check.metrics, stop="GRPO monitor kl alarm at step 3: forced") if step == 3 else check

    monkeypatch.setattr(Monitors, "after_step", alarm_at_3)
    _script(monkeypatch, [0.0] + [(0.1 * (k + 1), 0.01) for k in range(3)])
    rec, rows = run_grpo(tmp_path, {**BASE, "monitors": {"on_alarm": "stop"}, "select": {**SELECT, "max_tax": 0.1},
                                    "train": {**BASE["train"], "max_steps": 6}})
    assert rec["metrics"]["monitor_stop_step"] == 3.0
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and "select/similarity" not in rows[3]
    assert rows[2]["select/similarity"] > rows[1]["select/similarity"] and rows[2]["select/best"] == 1.0
    assert rec["metrics"]["select/step"] == 1.0
    stage = tmp_path / "run" / "stages" / "grpo"
    stop = json.loads((stage / "monitor_stop.json").read_text())
    assert "selected/step-000001" in stop["output_weights"] and "checkpoint selection" in stop["output_weights"]
    assert sorted(p.name for p in (stage / "selected").iterdir()) == ["step-000001"]
    _assert_weights_equal(stage / "final", safe_load(stage / "steps" / "step-000001" / "trainable.pt"))


def test_lora_measures_the_tax_against_the_adapter_disabled_base(tmp_path):
    rec, rows = run_grpo(tmp_path, {**BASE, "trainable": {"mode": "lora", "lora": {"r": 4}},
                                    "select": {**SELECT, "max_tax": 100.0},
                                    "train": {**BASE["train"], "max_steps": 2, "lr": 0.5}})
    assert all(r["select/kl_mean"] > 0 and math.isfinite(r["select/tax"]) for r in rows)
    assert rec["metrics"]["select/step"] in (0.0, 1.0)


def test_best_upto_takes_the_earliest_of_ties_and_skips_nan():
    rows = [{"select/similarity": 0.5, "select/tax": 0.0, "select/within_budget": 1.0}, {},
            {"select/similarity": 0.5, "select/tax": 0.0, "select/within_budget": 1.0},
            {"select/similarity": float("nan"), "select/tax": 0.0, "select/within_budget": 1.0},
            {"select/similarity": 0.9, "select/tax": 0.2, "select/within_budget": 0.0}]
    assert best_upto(rows, 4).step == 0
    assert best_upto(rows[1:2], 0) is None


@pytest.mark.parametrize("select, match", [
    ({"every": 2}, r"grpo.select.max_tax: required key is missing"),
    ({"max_tax": -0.1}, r"grpo.select: max_tax must be >= 0"),
    ({"max_tax": 0.1, "every": 0}, r"grpo.select: every must be >= 1"),
    ({"max_tax": 0.1, "heldout_prompts": 0}, r"grpo.select: heldout_prompts must be >= 1"),
    ({"max_tax": 0.1, "tax_texts": 0}, r"grpo.select: tax_texts must be >= 1"),
    ({"max_tax": 0.1, "tax_max_length": 1}, r"grpo.select: tax_max_length must be >= 2"),
    ({"max_tax": 0.1, "tax": "nll"}, r"grpo.select.tax: 'nll' is not allowed"),
    ({"max_tax": 0.1, "metric": "bleu"}, r"grpo.select.metric: 'bleu' is not allowed"),
    ({"max_tax": 0.1, "tax_data": "/no/such/file.jsonl"}, r"tax_data: '/no/such/file.jsonl' does not exist"),
    ({"max_tax": 0.1, "reward": "semantik"}, r"grpo: select.reward 'semantik' is not among the rewards \(language\)"),
    ({"max_tax": 0.1, "halfway": 1}, r"grpo.select.halfway: unknown key"),
])
def test_select_config_errors_name_the_key(select, match):
    with pytest.raises(ConfigError, match=match):
        build_config(GRPOConfig, {"rewards": [{"name": "language"}], "select": select}, where="grpo")


def test_select_is_off_by_default():
    assert build_config(GRPOConfig, {"rewards": [{"name": "language"}]}, where="grpo").select is None
