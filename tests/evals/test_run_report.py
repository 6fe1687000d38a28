"""``report.md`` + plots of a pipeline run (:func:`ftib.evals.report.write_run_report`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftib.core.errors import FtibError
from ftib.evals.report import run_markdown, write_run_report


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    pope = {"accuracy": 0.5, "f1": 0.4, "random/accuracy": 0.5, "popular/accuracy": 0.5,
            "adversarial/accuracy": 0.5, "yes_ratio": 0.5}
    manifest = {
        "status": "completed", "last_invocation_seconds": 321.0, "recipe_file": "configs/tiny.yaml",
        "platform": {"system": "Linux-test"}, "native": {"hardware_threads": 2},
        "versions": {"torch": "2.13.0", "transformers": "5.x"}, "git_commit": "abc",
        "config": {"evaluators": [{"name": "alignment_tax", "config": {"base_model": "stage:warmup"}}]},
        "stages": {
            "sft": {"status": "completed", "seconds": 10.0,
                    "metrics": {"steps": 4, "loss_first_10pct": 3.0, "loss_last_10pct": 1.0}},
            "grpo": {"status": "completed", "seconds": 20.0,
                     "metrics": {"steps": 2, "reward_first_20pct": 0.5, "reward_last_20pct": 0.9}},
        },
        "evals": {
            "base/pope": {"status": "completed", "name": "pope", "metrics": {**pope, "accuracy": 0.0}},
            "sft/pope": {"status": "completed", "name": "pope",
                         "metrics": {**pope, "random/accuracy": 0.875, "popular/accuracy": 0.8125}},
            "sft/mme": {"status": "completed", "name": "mme",
                        "metrics": {"perception": 400.0, "total": 450.0, "existence/score": 150.0,
                                    "count/score": 100.0, "position/score": 75.0, "color/score": 75.0,
                                    "numerical_calculation/score": 50.0}},
            "grpo/translation": {"status": "completed", "name": "translation",
                                 "metrics": {"chrf": 30.0, "bleu": 10.0, "similarity": 0.7}},
            "grpo/alignment_tax": {"status": "completed", "name": "alignment_tax",
                                   "metrics": {"nll_increase_mean": 0.1, "nll_increase_p90": 0.4, "kl_mean": 0.05}},
            "grpo/headline": {"status": "failed", "name": "headline", "metrics": {}},
        },
    }
    (run / "manifest.json").write_text(json.dumps(manifest))
    rows = [{"stage": "sft", "step": i, "loss": 3.0 - i * 0.5} for i in range(4)]
    rows += [{"stage": "grpo", "step": i, "loss": 0.0, "reward_mean": 0.5 + 0.4 * i} for i in range(2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_run_report_sections_and_plots(tmp_path):
    run = _run_dir(tmp_path)
    written = write_run_report(run)
    assert set(written) == {"markdown", "plot", "training_plot"}
    for path in written.values():
        assert path.is_file() and path.stat().st_size > 0
    text = (run / "report.md").read_text()
    assert "321 s wall" in text and "2 hardware threads" in text
    assert "| sft | 10 | 4 | 3 → 1 |" in text
    assert "reward (first 20% → last 20%) 0.5 → 0.9" in text
    # learning check: every POPE split with chance 0.5; MME perception chance = 75 x 4
    # perception subtasks (numerical_calculation is cognition)
    assert "| pope | random/accuracy | 0.5 | – | 0.5 | 0.875 |\n" in text  # grpo evaluated no benchmark of these
    assert "| mme | perception | 300 | – | – | 400 |\n" in text
    assert "| grpo | 20 | 0.7 | 10 | 30 | 0.1 | 0.4 | 0.05 |" in text
    assert "measured against `stage:warmup`" in text
    assert "headline" not in text.split("## Benchmarks")[1].split("## base")[0]  # failed evals are left out
    assert "![training curves](training_curves.png)" in text


def test_run_report_states_and_draws_the_recipes_targets(tmp_path):
    """An evaluator's ``target`` (in the recipe the run last ran) is a column of the
    learning table, a met score is marked, and the score plot draws it on the panel of
    its metric (a split's target on the metric's panel)."""
    from ftib.evals.report import collect_run, panel_targets, run_targets, score_panels

    run = _run_dir(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["evaluators"] += [
        {"id": "pope", "name": "pope", "target": {"random/accuracy": 0.85, "popular/accuracy": 0.85}},
        {"id": "mme", "name": "mme", "target": {"perception": 327.5, "percepton": 1.0}}]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert run_targets(manifest) == {"pope": {"random/accuracy": 0.85, "popular/accuracy": 0.85},
                                     "mme": {"perception": 327.5, "percepton": 1.0}}
    write_run_report(run)
    text = (run / "report.md").read_text()
    # a target on a metric the evaluation never reported is named, with the right spelling
    assert ("- **target not checked**: evaluators.mme.target.percepton: mme reports no metric 'percepton' "
            "(did you mean 'perception'?") in text
    assert "| pope | random/accuracy | 0.5 | ≥ 0.85 | 0.5 | 0.875 ✓ |\n" in text
    assert "| pope | popular/accuracy | 0.5 | ≥ 0.85 | 0.5 | 0.8125 |\n" in text
    assert "| pope | adversarial/accuracy | 0.5 | – | 0.5 | 0.5 |\n" in text
    assert "| mme | perception | 300 | ≥ 327.5 | – | 400 ✓ |\n" in text
    panels = {name: (key, ids) for name, key, ids in score_panels(collect_run(run))}
    assert panels["pope"] == ("accuracy", ["pope"]) and panels["mme"] == ("perception", ["mme"])
    assert panel_targets("accuracy", ["pope"], run_targets(manifest)) == [("pope", 0.85)]  # one line for both
    assert panel_targets("perception", ["mme"], run_targets(manifest)) == [("mme", 327.5)]
    assert panel_targets("f1", ["pope"], run_targets(manifest)) == []


def test_run_report_errors_name_the_problem(tmp_path):
    with pytest.raises(FtibError, match="no manifest.json"):
        run_markdown(tmp_path)
    run = _run_dir(tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write("{not json\n")
    with pytest.raises(FtibError, match=r"metrics.jsonl:7: not valid JSON"):
        write_run_report(run)
    assert not (run / "report.md").exists()  # nothing half-written


def test_text_task_encoder_must_exist(tmp_path):
    from ftib.core.errors import ConfigError
    from ftib.core.registry import EVALUATORS, Registry
    from ftib.core.config import build

    cls = Registry().load(EVALUATORS, "translation")
    with pytest.raises(ConfigError, match="neither 'ftibworld-encoder' nor a local"):
        build(cls.Config, {"encoder": str(tmp_path / "missing")})
    assert build(cls.Config, {"encoder": "ftibworld-encoder"}).encoder == "ftibworld-encoder"


def test_grpo_monitor_curves_and_alarms_are_reported(tmp_path, monkeypatch):
    """A GRPO stage that logged monitors: one panel per monitor curve it logged (alarm
    steps marked), and the stage table names the alarms and the monitor stop."""
    from ftib.evals import report

    run = _run_dir(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["grpo"]["metrics"].update({"monitor_length_alarm_steps": 1.0, "monitor_kl_alarm_steps": 0.0,
                                                  "monitor_stop_step": 1.0})
    (run / "manifest.json").write_text(json.dumps(manifest))
    rows = [{"stage": "grpo", "step": i, "loss": 0.0, "reward_mean": 0.5, "kl": 0.01, "monitor/alarms": float(i),
             "monitor/length_ratio": 1.0 + 2 * i, "monitor/length_alarm": float(i), "monitor/kl_alarm": 0.0}
            for i in range(2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    titles = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, **kw: (titles.append(t), real(self, t, **kw)))
    assert report.plot_training(run, tmp_path / "curves.png").is_file()
    assert titles == ["grpo: loss", "grpo: reward_mean", "grpo: monitor/length_ratio", "grpo: kl"]
    text = run_markdown(run)
    assert "monitor alarms (steps) length 1" in text and "kl 0" not in text
    assert "stopped by a monitor after step 1" in text


def test_grpo_checkpoint_selection_is_reported(tmp_path, monkeypatch):
    """A GRPO stage with checkpoint selection: the stage table names the choice, a
    section lists the curve from selection.json, and both curves are plotted."""
    from ftib.evals import report

    run = _run_dir(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["grpo"]["metrics"].update({"select/step": 1.0, "select/similarity": 0.61, "select/tax": 0.04,
                                                  "select/max_tax": 0.1, "select/none_within_budget": 0.0})
    (run / "manifest.json").write_text(json.dumps(manifest))
    curve = [{"step": 0, "similarity": 0.5, "tax": 0.02, "within_budget": True},
             {"step": 1, "similarity": 0.61, "tax": 0.04, "within_budget": True},
             {"step": 2, "similarity": 0.7, "tax": 0.3, "within_budget": False}]
    stage = run / "stages" / "grpo"
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "selection.json").write_text(json.dumps({
        "metric": "similarity", "tax_metric": "nll_increase_mean", "max_tax": 0.1, "every": 1, "chosen_step": 1,
        "similarity_start": 0.4, "curve": curve}))
    rows = [{"stage": "grpo", "step": c["step"], "loss": 0.0, "reward_mean": 0.5, "select/similarity": c["similarity"],
             "select/tax": c["tax"], "select/within_budget": float(c["within_budget"])} for c in curve]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    titles = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, **kw: (titles.append(t), real(self, t, **kw)))
    assert report.plot_training(run, tmp_path / "curves.png").is_file()
    assert titles == ["grpo: loss", "grpo: reward_mean", "grpo: select/similarity", "grpo: select/tax"]
    text = run_markdown(run)
    assert "selected step 1 (similarity 0.61" in text
    assert "## Checkpoint selection" in text and "| 2 | 0.7 | 0.3 | no |  |" in text and "| 1 | 0.61 | 0.04 | yes | ✓ |" in text


def test_smoothing_is_pandas_ewm_adjusted():
    """The report's curve smoothing equals pandas' ``ewm(span, adjust=True).mean()``,
    written out: y_t = sum_k (1-a)^k x_{t-k} / sum_k (1-a)^k, a = 2 / (span + 1)."""
    from ftib.evals.report import smooth, smoothing_span

    xs = [1.0, 3.0, 2.0, 5.0, 4.0, 0.0]
    a = 2.0 / (3 + 1)
    want = [sum((1 - a) ** k * xs[t - k] for k in range(t + 1)) / sum((1 - a) ** k for k in range(t + 1))
            for t in range(len(xs))]
    assert smooth(xs, 3) == pytest.approx(want)
    assert smooth([7.0] * 30) == pytest.approx([7.0] * 30)  # a constant stays itself
    assert smoothing_span(10) == 5 and smoothing_span(400) == 20


def test_one_score_panel_per_benchmark_with_both_languages():
    """pope (Tibetan) and pope_zh (Chinese) share a panel; mme has its own."""
    from ftib.evals.report import score_panels

    results = {
        "base": {"pope_bo": {"name": "pope", "metrics": {"accuracy": 0.5}},
                 "pope_zh": {"name": "pope", "metrics": {"accuracy": 0.9}}},
        "sft": {"pope_bo": {"name": "pope", "metrics": {"accuracy": 0.8}},
                "pope_zh": {"name": "pope", "metrics": {"accuracy": 0.85}},
                "mme": {"name": "mme", "metrics": {"perception": 400.0}}},
    }
    panels = score_panels(results)
    assert [(n, ids) for n, _, ids in panels] == [("pope", ["pope_bo", "pope_zh"]), ("mme", ["mme"])]
