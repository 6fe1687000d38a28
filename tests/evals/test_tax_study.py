"""The alignment-tax study driver (``python -m ftib.evals.tax_study``): which stages and
evaluators each arm's run gets, the sweep's choice, reuse of runs, the summary and its
report. Runs are faked by a runner that writes a manifest (the real ``ftib run`` of the
recipe is covered by the slow test at the end)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftib.core import ConfigError
from ftib.evals import tax_study as ts

RAW = {
    "run": {"seed": 0},
    "model": {"name_or_path": "tiny-qwen3"},
    "stages": [
        {"id": "retext", "name": "cpt", "config": {"train": {"lr": 1e-3}}},
        {"id": "strong", "name": "sft", "from": "retext", "config": {"train": {"lr": 1e-3}}},
        {"id": "cold", "name": "sft", "from": "retext", "config": {"max_records": 10, "train": {"lr": 1e-3}}},
        {"id": "grpo", "name": "grpo", "from": "cold", "config": {"skip_prompts": 10, "train": {"lr": 1e-4}}},
    ],
    "evaluators": [
        {"name": "translation", "after": ["strong", "cold", "grpo"]},
        {"id": "pope_zh", "name": "pope", "after": ["base", "retext", "strong", "grpo"]},
        {"name": "headline", "after": ["cold"]},
    ],
}


def test_an_arm_keeps_the_shared_stages_and_its_own_and_the_evaluators_after_them():
    r = ts.arm_recipe(RAW, ts.DEFAULT_ARMS, "grpo", 3e-4, 2)
    assert [s["id"] for s in r["stages"]] == ["retext", "cold", "grpo"]
    assert r["run"]["seed"] == 2
    assert r["stages"][2]["config"]["train"]["lr"] == 3e-4
    assert r["stages"][1]["config"]["train"]["lr"] == 1e-3  # only the arm's last stage is swept
    after = {e.get("id", e["name"]): e["after"] for e in r["evaluators"]}
    assert after == {"translation": ["cold", "grpo"], "pope_zh": ["base", "retext", "grpo"], "headline": ["cold"]}
    s = ts.arm_recipe(RAW, ts.DEFAULT_ARMS, "sft", None, 0)
    assert [x["id"] for x in s["stages"]] == ["retext", "strong"]
    assert {e.get("id", e["name"]) for e in s["evaluators"]} == {"translation", "pope_zh"}  # headline: cold only
    assert RAW["stages"][1]["config"]["train"]["lr"] == 1e-3  # the input is not changed


def test_an_arm_naming_a_missing_stage_is_an_error_with_the_closest_name():
    with pytest.raises(ConfigError, match=r"--arm sft: the recipe has no stage 'strnog'.*strong"):
        ts.arm_recipe(RAW, {"sft": ("strnog",), "grpo": ("cold", "grpo")}, "grpo", None, 0)


def _fake_runner(scores, calls):
    """A run whose metrics are ``scores(arm, lr, seed)``: writes the manifest a real run
    would write (the arm's last stage and the base), so collect_arm reads it."""
    def run_one(out, raw, arms, arm, lr, seed, progress, threads=None):
        name = ts._run_name(arm, lr, seed)
        calls.append(name)
        d = Path(out) / "runs" / name
        d.mkdir(parents=True, exist_ok=True)
        sim, tax = scores(arm, lr, seed)
        last = arms[arm][-1]
        translation = {"similarity": sim, "bleu": 10 * sim, "chrf": 9 * sim}
        taxes = {"nll_increase_mean": tax, "nll_increase_p90": 2 * tax, "kl_mean": tax / 2}
        manifest = {"stages": {s: {"status": "completed", "seconds": 2.0} for s in arms[arm]},
                    "evals": {f"{last}/translation": {"status": "completed", "name": "translation",
                                                       "metrics": translation},
                              f"{last}/alignment_tax": {"status": "completed", "name": "alignment_tax",
                                                         "metrics": taxes},
                              "base/pope_zh": {"status": "completed", "name": "pope", "metrics": {"accuracy": 0.9}},
                              f"{last}/pope_zh": {"status": "completed", "name": "pope",
                                                  "metrics": {"accuracy": 0.9 - tax}}}}
        (d / "manifest.json").write_text(json.dumps(manifest))
        return d
    return run_one


def test_the_study_picks_each_arms_best_rate_reuses_the_sweep_run_and_reports_mean_and_std(tmp_path, monkeypatch):
    import yaml

    recipe = tmp_path / "study.yaml"
    recipe.write_text(yaml.safe_dump(RAW))

    def scores(arm, lr, seed):
        best = {"sft": 1e-3, "grpo": 1e-4}[arm]
        sim = 0.5 - abs(lr - best) * 100 + 0.01 * seed
        return sim, (0.4 if arm == "sft" else 0.1) + 0.02 * seed

    calls: list[str] = []
    monkeypatch.setattr(ts, "run_one", _fake_runner(scores, calls))
    rc = ts.main([str(recipe), "--out", str(tmp_path / "out"), "--sweep", "sft=3e-4,1e-3,3e-3",
                  "--sweep", "grpo=1e-4,1e-3", "--seeds", "0", "1", "2", "--jobs", "2", "--no-progress"])
    assert rc == 0
    sweep = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert sweep["best"] == {"sft": 1e-3, "grpo": 1e-4}
    # the sweep's seed-0 run at the best rate is the seed-0 run of the study (asked for again: ftib run resumes it)
    assert calls.count("sft-lr0.001-seed0") == 2 and len(calls) == 5 + 6
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    tax = res["summary"]["grpo"]["alignment_tax/nll_increase_mean"]
    assert tax["values"] == pytest.approx([0.1, 0.12, 0.14])
    assert tax["mean"] == pytest.approx(0.12) and tax["std"] == pytest.approx(0.02)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| sft | 0.001 **(best)** |" in report
    assert "zh NLL increase mean: -0.300" in report and "grpo better" in report
    assert "| base (reference) | – |" in report  # the base's Chinese POPE beside the arms
    assert (tmp_path / "out" / "tax_study.png").stat().st_size > 0


def test_a_select_metric_no_run_has_is_an_error_naming_what_it_has(tmp_path, monkeypatch, capsys):
    import yaml

    recipe = tmp_path / "study.yaml"
    recipe.write_text(yaml.safe_dump(RAW))
    monkeypatch.setattr(ts, "run_one", _fake_runner(lambda a, lr, s: (0.5, 0.1), []))
    rc = ts.main([str(recipe), "--out", str(tmp_path / "out"), "--sweep", "sft=1e-3",
                  "--select", "translation/simlarity"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--select translation/simlarity" in err and "translation/similarity" in err


def test_a_sweep_of_an_unknown_arm_is_an_error_before_any_run(tmp_path, monkeypatch, capsys):
    import yaml

    recipe = tmp_path / "study.yaml"
    recipe.write_text(yaml.safe_dump(RAW))
    calls: list[str] = []
    monkeypatch.setattr(ts, "run_one", _fake_runner(lambda a, lr, s: (0.5, 0.1), calls))
    assert ts.main([str(recipe), "--out", str(tmp_path / "out"), "--sweep", "gpro=1e-3"]) == 2
    assert "--sweep gpro: no such arm" in capsys.readouterr().err and not calls


def test_a_failing_run_stops_the_study_with_its_directory_and_log(tmp_path, monkeypatch):
    from ftib.core.errors import FtibError

    import subprocess

    class Done:
        returncode = 3

    def fake_run(cmd, stdout, stderr, check, env):
        stdout.write("line one\nstage strong failed: boom\n")
        return Done()

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(FtibError, match=r"(?s)sft-lr0.001-seed0 failed \(exit 3\).*boom"):
        ts.run_one(tmp_path, RAW, ts.DEFAULT_ARMS, "sft", 1e-3, 0, progress=False)
    written = (tmp_path / "recipes" / "sft-lr0.001-seed0.yaml").read_text()
    assert "grpo" not in written and "strong" in written


def test_the_shared_stages_scores_are_the_references_and_the_arms_own_middle_stages_are_left_out(tmp_path):
    evals = {"base/pope_zh": {"accuracy": 0.9}, "retext/pope_zh": {"accuracy": 0.92},
             "cold/translation": {"similarity": 0.1}, "grpo/translation": {"similarity": 0.3}}
    manifest = {"stages": {"retext": {"seconds": 5.0}, "cold": {"seconds": 2.0}, "grpo": {"seconds": 7.0}},
                "evals": {k: {"status": "completed", "metrics": v} for k, v in evals.items()}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    got = ts.collect_arm(tmp_path, ts.DEFAULT_ARMS, "grpo")
    assert got == {"translation/similarity": 0.3, "@base/pope_zh/accuracy": 0.9,
                   "@retext/pope_zh/accuracy": 0.92, "seconds": 9.0}
    refs = ts.references({"grpo": {0: got, 1: {**got, "@retext/pope_zh/accuracy": 0.96}}})
    assert refs == {"base": {"pope_zh/accuracy": 0.9}, "retext": {"pope_zh/accuracy": pytest.approx(0.94)}}


def test_the_packaged_study_recipe_splits_into_the_papers_two_arms():
    from ftib.core.recipe import read_yaml

    raw = read_yaml(Path(__file__).resolve().parents[2] / "configs" / "tax-study.yaml")
    sft = ts.arm_recipe(raw, ts.DEFAULT_ARMS, "sft", 3e-3, 1)
    grpo = ts.arm_recipe(raw, ts.DEFAULT_ARMS, "grpo", 3e-4, 1)
    assert [s["id"] for s in sft["stages"]] == ["strong"] and sft["stages"][0]["from"] == "base"
    assert [s["id"] for s in grpo["stages"]] == ["cold", "grpo"] and grpo["stages"][0]["from"] == "base"
    cold, rl = grpo["stages"][0]["config"], grpo["stages"][1]["config"]
    assert rl["skip_prompts"] == cold["max_records"]  # GRPO trains on the pairs the cold start did not see
    assert "max_records" not in sft["stages"][0]["config"]  # the strong arm sees every pair
    tax = next(e for e in grpo["evaluators"] if e["name"] == "alignment_tax")
    assert tax["config"]["base_model"] == "base" and tax["config"]["lang"] == "zh"


@pytest.mark.slow
def test_the_study_runs_the_packaged_recipe_end_to_end(tmp_path, ftib_cache):
    """The real ``ftib run`` of every run, shrunk: two sweep rates of the SFT arm, two
    seeds of each arm."""
    recipe = Path(__file__).resolve().parents[2] / "configs" / "tax-study.yaml"
    tiny = "ftibworld:tiny"  # a tiny world: the session's fresh cache builds it in seconds
    shrink = [f"stages.{s}.data={tiny}" for s in ("strong", "cold", "grpo")] + [
        "stages.cold.max_records=20", "stages.grpo.skip_prompts=20"] + [
        f"evaluators.{e}.data={tiny}" for e in ("translation", "alignment_tax", "pope_zh", "binary_vqa_zh")] + [
        "stages.strong.train.max_steps=2", "stages.cold.train.max_steps=2",
              "stages.grpo.train.max_steps=2", "stages.grpo.group_size=2", "evaluators.translation.limit=4",
              "evaluators.alignment_tax.limit=4", "evaluators.pope_zh.limit=2", "evaluators.binary_vqa_zh.limit=4"]
    args = [str(recipe), "--out", str(tmp_path / "study"), "--sweep", "sft=1e-3,3e-3", "--seeds", "0", "1",
            "--jobs", "2", "--no-progress"]
    for o in shrink:
        args += ["--set", o]
    assert ts.main(args) == 0
    res = json.loads((tmp_path / "study" / "results.json").read_text())
    assert sorted(res["per_seed"]["sft"]) == ["0", "1"] and sorted(res["per_seed"]["grpo"]) == ["0", "1"]
    assert res["best_lr"]["sft"] in (1e-3, 3e-3) and res["best_lr"]["grpo"] is None
    assert len(list((tmp_path / "study" / "runs").iterdir())) == 2 + 1 + 2  # the sweep's seed-0 run is reused
    for arm in ("sft", "grpo"):
        s = res["summary"][arm]
        assert s["alignment_tax/nll_increase_mean"]["n"] == 2 and "@base/pope_zh/accuracy" in s
    assert "(reference)" in (tmp_path / "study" / "report.md").read_text()


def test_only_runs_the_named_arms_and_an_unknown_one_is_an_error(tmp_path, monkeypatch, capsys):
    import yaml

    recipe = tmp_path / "study.yaml"
    recipe.write_text(yaml.safe_dump(RAW))
    calls: list[str] = []
    monkeypatch.setattr(ts, "run_one", _fake_runner(lambda a, lr, s: (0.5, 0.1), calls))
    assert ts.main([str(recipe), "--out", str(tmp_path / "a"), "--sweep", "grpo=1e-4,3e-4", "--only", "grpo",
                    "--seeds", "0", "--set", "stages.cold.train.lr=1e-4"]) == 0
    assert calls == ["grpo-lr0.0001-seed0", "grpo-lr0.0003-seed0", "grpo-lr0.0001-seed0"]
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(res["per_seed"]) == ["grpo"] and res["overrides"] == ["stages.cold.train.lr=1e-4"]
    assert "`stages.cold.train.lr=1e-4`" in (tmp_path / "a" / "report.md").read_text()
    assert ts.main([str(recipe), "--out", str(tmp_path / "b"), "--only", "rl"]) == 2
    assert "--only rl: no such arm" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--sweep", "sft=1e-3,fast"], "--sweep sft=1e-3,fast: the learning rates must be numbers"),
    (["--sweep", "sft=0"], "give one or more learning rates > 0"),
    (["--arm", "sft=", "--arm", "grpo=cold,grpo"], "--arm sft: name its stages"),
    (["--sweep", "sft"], "--sweep 'sft': use NAME=VALUE,VALUE"),
    (["--jobs", "0"], "--jobs must be >= 1"),
])
def test_malformed_options_are_errors_before_any_run(tmp_path, monkeypatch, capsys, args, message):
    import yaml

    recipe = tmp_path / "study.yaml"
    recipe.write_text(yaml.safe_dump(RAW))
    calls: list[str] = []
    monkeypatch.setattr(ts, "run_one", _fake_runner(lambda a, lr, s: (0.5, 0.1), calls))
    assert ts.main([str(recipe), "--out", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err and not calls
