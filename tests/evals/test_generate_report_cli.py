"""The transformers-backed generator on the tiny preset, reports, ``ftib eval`` and the
evaluators inside a pipeline run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftib.core.cli import main
from ftib.evals.generate import Decoding, Generator, TransformersGenerator
from ftib.evals.report import collect_run, markdown, write_report


@pytest.fixture(scope="module")
def vl_bundle():
    """The tiny VLM with re-drawn weights: an untrained preset only emits newlines, which
    would make any two generations look alike."""
    import torch

    from ftib.models.bundle import load_bundle

    bundle = load_bundle("tiny-qwen3-vl")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in bundle.model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return bundle


def test_transformers_generator_batches_like_single_prompts(vl_bundle, world):
    from ftib.evals.loaders import load_items

    items = load_items("pope", world, limit=2)
    gen = TransformersGenerator(vl_bundle)
    assert isinstance(gen, Generator)
    prompts = [(items[0].question, items[0].load_image()), ("བཀྲ་ཤིས་བདེ་ལེགས།", None),
               (items[1].question + " ལན་ཐུང་ངུ་ཞིག་འདེབས་རོགས།", items[1].load_image())]
    batched = gen.generate(prompts, Decoding(max_new_tokens=6, batch_size=3))
    single = [gen.generate([p], Decoding(max_new_tokens=6, batch_size=1))[0] for p in prompts]
    assert len(batched) == 3 and all(isinstance(r, str) for r in batched)
    assert sum(bool(r) for r in batched) >= 2 and len(set(batched)) >= 2
    assert batched == single
    # greedy decoding is deterministic
    assert gen.generate(prompts, Decoding(max_new_tokens=6, batch_size=2)) == batched


def test_text_only_model_refuses_images(world):
    from ftib.core.errors import FtibError
    from ftib.models.bundle import load_bundle

    gen = TransformersGenerator(load_bundle("tiny-qwen3"))
    assert len(gen.generate([("བཀྲ་ཤིས།", None)], Decoding(max_new_tokens=2))) == 1
    from PIL import Image

    with pytest.raises(FtibError, match="text-only"):
        gen.generate([("x", Image.new("RGB", (32, 32)))], Decoding(max_new_tokens=2))


RESULTS = {
    "base": {"pope": {"name": "pope", "metrics": {"f1": 0.4, "accuracy": 0.5, "yes_ratio": 0.9,
                                                  "unparsed_ratio": 0.1, "rule/yes_no_bo": 0.9, "rule/none": 0.1}},
             "mmbench": {"name": "mmbench", "metrics": {"circular": 0.0, "vanilla": 0.25}}},
    "sft": {"pope": {"name": "pope", "metrics": {"f1": 0.8, "accuracy": 0.8, "yes_ratio": 0.5,
                                                 "unparsed_ratio": 0.0, "rule/yes_no_bo": 1.0, "rule/none": 0.0}},
            "mmbench": {"name": "mmbench", "metrics": {"circular": 0.5, "vanilla": 0.75}}},
}


def test_markdown_report():
    text = markdown(RESULTS)
    assert "| benchmark | metric | base | sft |" in text
    assert "| pope | f1 ↑ | 0.4 | 0.8 |" in text
    assert "| mmbench | circular ↑ | 0 | 0.5 |" in text
    assert "parsed by yes_no_bo 90%, none 10%" in text


def test_report_plot_for_several_stages(tmp_path):
    written = write_report(RESULTS, tmp_path)
    png = written["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    from PIL import Image

    with Image.open(written["plot"]) as im:
        assert im.size[0] > 200
    assert "scores_by_stage.png" in written["markdown"].read_text(encoding="utf-8")
    one = write_report({"base": RESULTS["base"]}, tmp_path / "one")
    assert "plot" not in one


def test_ftib_eval_cli(world, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["eval", "--model", "tiny-qwen3-vl", "--bench", "mmbench,pope,mme", "--data", str(world),
               "--limit", "1", "--out", str(out), "--device", "cpu", "--set", "max_new_tokens=4"])
    assert rc == 0
    ev = out / "eval"
    for bench in ("mmbench", "pope", "mme"):
        doc = json.loads((ev / f"{bench}.json").read_text(encoding="utf-8"))
        assert doc["details"]["decoding"] == {"max_new_tokens": 4, "do_sample": False, "temperature": 1.0,
                                              "top_p": 1.0, "batch_size": 8, "enable_thinking": False,
                                              "min_pixels": None, "max_pixels": None}
        assert doc["details"]["pixel_budget"] == {"min_pixels": 4096, "max_pixels": 4096, "source": "processor"}
        lines = (ev / f"{bench}.records.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == doc["details"]["items"]
        assert {"id", "prediction", "parsed", "gold", "correct", "rule"} <= set(json.loads(lines[0]))
    report = (ev / "report.md").read_text(encoding="utf-8")
    assert "| pope | f1 ↑ |" in report
    assert "report" not in capsys.readouterr().err


def test_ftib_eval_cli_errors(world, tmp_path, capsys):
    assert main(["eval", "--model", "x", "--bench", "popee", "--data", str(world)]) == 2
    assert "did you mean 'pope'" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--bench", "pope", "--data", str(world), "--set", "nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--bench", "pope", "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluators_in_a_pipeline_run(world, tmp_path):
    from ftib.core.pipeline import Pipeline
    from ftib.core.recipe import build_recipe
    from ftib.core.registry import Registry

    recipe = build_recipe({
        "run": {"device": "cpu", "dtype": "float32"},
        "model": "tiny-qwen3-vl",
        "evaluators": [
            {"name": "corevqa", "after": ["base"], "config": {"data": str(world), "limit": 3}},
            {"name": "headline", "after": ["base"], "config": {"data": str(world), "limit": 2,
                                                                "max_new_tokens": 4}},
        ],
    }, Registry())
    run_dir = tmp_path / "run"
    manifest = Pipeline(recipe, run_dir, progress=False).run()
    assert manifest["evals"]["base/corevqa"]["status"] == "completed"
    recs = (run_dir / "evals" / "base" / "corevqa" / "records.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(recs) == 3
    results = collect_run(run_dir)
    assert list(results) == ["base"] and set(results["base"]) == {"corevqa", "headline"}
    assert main(["eval", "--report", str(run_dir)]) == 0
    assert "| corevqa | accuracy ↑ |" in (run_dir / "report.md").read_text(encoding="utf-8")
    assert Path(run_dir / "report.md").is_file()


def test_report_of_a_run_orders_points_by_stage(tmp_path):
    # a manifest as the pipeline writes it: evaluations after base, cpt and sft
    manifest = {
        "manifest_version": 1,
        "stages": {"cpt": {"status": "completed"}, "sft": {"status": "completed"}},
        "evals": {
            "sft/pope": {"name": "pope", "status": "completed", "metrics": {"f1": 0.9}},
            "base/pope": {"name": "pope", "status": "completed", "metrics": {"f1": 0.2}},
            "cpt/pope": {"name": "pope", "status": "completed", "metrics": {"f1": 0.5}},
            "cpt/mme": {"name": "mme", "status": "failed", "metrics": {}},
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    results = collect_run(tmp_path)
    assert list(results) == ["base", "cpt", "sft"]
    assert "mme" not in results["cpt"]  # only completed evaluations are reported
    assert main(["eval", "--report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| pope | f1 ↑ | 0.2 | 0.5 | 0.9 |" in text
    assert (tmp_path / "scores_by_stage.png").read_bytes()[:4] == b"\x89PNG"
