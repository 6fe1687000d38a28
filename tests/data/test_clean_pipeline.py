"""``ftib data clean`` on datatrove: blocks alone, then whole runs (local executor).

The whole runs are the slow part (8-20 s each: eight datatrove stages): hand-made dirty
text, an all-dropped input, an interrupted run, and the real samples in
``../shared/data`` (``FTIB_SHARED_DATA`` overrides where they are; skipped when absent).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("datatrove")

from datatrove.data import Document  # noqa: E402

from ftib.core.errors import FtibError  # noqa: E402
from ftib.data.clean import blocks  # noqa: E402
from ftib.data.clean.config import CleanConfig, QualityConfig, ScriptConfig, load_clean_config  # noqa: E402
from ftib.data.clean.pipeline import collect_inputs, run_clean  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("FTIB_SHARED_DATA", ROOT.parent / "shared" / "data"))

S1 = "བོད་ཀྱི་ཡི་གེ་ནི་རྒྱལ་ཁབ་མང་པོར་སྤྱོད་ཀྱི་ཡོད་པ་རེད།"
S2 = "ཁོ་རང་ཉིན་རེ་བཞིན་སློབ་གྲྭར་འགྲོ་གི་ཡོད་དེ་དཔེ་ཆ་མང་པོ་ཀློག་གི་ཡོད།"
S3 = "ནམ་མཁའ་སྔོན་པོ་དང་རི་བོ་དཀར་པོ་ཡོད་པའི་ཡུལ་ལྗོངས་ཤིག་ན་མི་མང་པོ་སྡོད་ཀྱི་ཡོད།"


def _docs(*texts: str) -> list[Document]:
    return [Document(text=t, id=str(i)) for i, t in enumerate(texts)]


def test_script_filter_lines_and_documents():
    f = blocks.TibetanScriptFilter(ScriptConfig(line_min_share=0.2, mixed_lines="keep", doc_min_share=0.5))
    kept = list(f.run(_docs(f"{S1}\nThis line is English only.\nWelsh AMs {S2}", "English only text here.")))
    assert [d.id for d in kept] == ["0"]
    assert kept[0].text == f"{S1}\nWelsh AMs {S2}"  # foreign line removed, mixed line kept
    f = blocks.TibetanScriptFilter(ScriptConfig(mixed_lines="drop"))
    kept = list(f.run(_docs(f"{S1}\nWelsh AMs {S2}")))
    assert kept[0].text == S1
    stats = f.stats
    assert stats["lines_mixed"].total == 1


def test_quality_filter_reasons():
    f = blocks.SyllableQualityFilter(QualityConfig(min_syllables=5, repeat_ngram=3, max_repeat_fraction=0.5,
                                                   max_non_tibetan_share=0.3))
    docs = _docs(f"{S1}\n།། ༄༅ ***", "བོད་ཡིག།", "ཀ་ཁ་ག་ང་" * 10, f"{S2} " + " ".join(f"word{i}" for i in range(40)))
    kept = list(f.run(docs))
    assert [d.id for d in kept] == ["0"] and kept[0].text == S1  # punctuation line removed
    assert {k: f.stats[f"dropped_{k}"].total for k in ("too_short", "repetition", "non_tibetan")} == \
        {"too_short": 1, "repetition": 1, "non_tibetan": 1}


def test_repairs_step_counts_per_rule_and_honours_options():
    step = blocks.TibetanRepairs(("nbsp", "latin_glue"))
    out = list(step.run(_docs("AMsརང\u00a0ཉིད", S1)))
    assert out[0].text == "AMs རང ཉིད" and out[1].text == S1
    assert step.stats["nbsp_fixes"].total == 1 and step.stats["latin_glue_docs"].total == 1
    step = blocks.TibetanRepairs(("nbsp",))
    assert list(step.run(_docs("AMsརང\u00a0ཉིད")))[0].text == "AMsརང ཉིད"


def test_text_reader_counts_bad_utf8_lines(tmp_path):
    raw = (S1 + "\n" + S2 + "\n\n").encode() + b"\xff\xfe broken\n" + (S3 + "\n").encode()
    (tmp_path / "a.txt").write_bytes(raw)
    r = blocks.TibetanTextReader(str(tmp_path), glob_pattern="a.txt", mode="block",
                                 max_bad_line_share=0.5, problems_folder=str(tmp_path / "p"))
    docs = list(r.run())
    assert [d.text for d in docs] == [f"{S1}\n{S2}", S3]
    assert [d.id for d in docs] == ["a.txt:1", "a.txt:5"]
    assert r.stats["bad_utf8_lines"].total == 1
    problem = json.loads((tmp_path / "p" / "00000_read_txt.jsonl").read_text())
    assert (problem["file"], problem["line"], problem["kind"]) == ("a.txt", 4, "bad_utf8_lines")
    r = blocks.TibetanTextReader(str(tmp_path), glob_pattern="a.txt", mode="line", max_bad_line_share=0.5)
    assert len(list(r.run())) == 3
    (tmp_path / "b.txt").write_bytes("བོད".encode("utf-16"))  # another encoding: an error
    r = blocks.TibetanTextReader(str(tmp_path), glob_pattern="b.txt", mode="line")
    with pytest.raises(FtibError, match="b.txt.*not UTF-8"):
        list(r.run())


def test_jsonl_reader_counts_bad_records(tmp_path):
    lines = [json.dumps({"text": S1}), "{not json", json.dumps({"body": S2}), json.dumps({"text": S3, "id": "x"})]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines * 3) + "\n")
    r = blocks.TibetanJsonlReader(str(tmp_path), glob_pattern="a.jsonl.gz", max_bad_line_share=1.0)
    docs = list(r.run())
    assert [d.id for d in docs[:2]] == ["a.jsonl.gz:1", "x"]
    assert r.stats["bad_json_lines"].total == 3 and r.stats["records_without_text"].total == 3


def test_inputs_errors(tmp_path):
    with pytest.raises(FtibError, match="does not exist"):
        collect_inputs([tmp_path / "missing.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FtibError, match="no input files"):
        collect_inputs([tmp_path / "empty"])
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(FtibError, match="empty"):
        collect_inputs([tmp_path / "e.txt"])
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(FtibError, match="unknown kind"):
        collect_inputs([tmp_path / "x.csv"])


def _fast_cfg(**sections) -> CleanConfig:
    # Fewer bands keep the test's MinHash bucket stage at 4 tasks.
    base = {"minhash": {"bands": 4, "threshold": 0.5, "shingle": 3}}
    base.update(sections)
    return load_clean_config(None, base)


def test_whole_run_repairs_filters_dedups_and_resumes(tmp_path):
    near = S3.replace("མི་མང་པོ", "མི་ཉུང་ཤས")
    parts = [f"\ufeff{S1}", "སྔོན་མ་ཞིག་ལ་རྒྱལ་པོ་ཞིག་ཡོད་པ་དང་ཁོང་གིིས་ཡུལ་མི་རྣམས་ལ་་Brexitབྱམས་པ་ཆེན་པོ་བྱས་སོང་།",
             S3, near, "English only text, nothing Tibetan here at all.", S1 + "\u00a0", "༄༅།།"]
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    (src / "b.jsonl").write_text(json.dumps({"text": S2 + " ུ"}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    cfg = _fast_cfg()
    report = run_clean([src], out, cfg, progress=False)
    rep = json.loads((out / "report.json").read_text())
    assert rep["read"]["documents"] == 8
    r = rep["rules"]
    assert r["zero_width"]["fixes"] == 1 and r["nbsp"]["fixes"] == 1 and r["doubled_vowel"]["fixes"] == 1
    assert r["repeated_tsheg"]["fixes"] == 1 and r["latin_glue"]["fixes"] == 2 and r["orphan_mark"]["fixes"] == 1
    assert r["space_before_tsheg"]["fixes"] == 0
    assert rep["script"]["lines_foreign"] == 1 and rep["script"]["dropped_empty"] == 1  # the English block
    assert rep["script"]["dropped_no_letters"] == 1  # the punctuation-only block
    assert rep["exact_dedup"]["removed"] == 1  # S1 with a trailing NBSP is S1 once repaired
    assert rep["exact_dedup"]["cluster_sizes"] == {"2": 1}
    assert rep["near_dedup"]["removed"] == 1 and rep["near_dedup"]["cluster_sizes"] == {"2": 1}
    assert rep["kept"]["documents"] == 4
    assert (out / "lengths.png").stat().st_size > 0 and "## Examples" in report.read_text()
    # The CPT stage reads the output folder as it is.
    from ftib.stages.cpt import read_documents

    docs = read_documents((out,))
    assert len(docs) == 4 and S1 in docs and "ཁོང་གིས་ཡུལ་མི་རྣམས་ལ་ Brexit བྱམས་པ" in "".join(docs)
    # Resume: the same command again skips every finished task and changes nothing.
    before = sorted((p.name, p.read_bytes()) for p in out.glob("*.jsonl"))
    run_clean([src], out, cfg, progress=False)
    assert sorted((p.name, p.read_bytes()) for p in out.glob("*.jsonl")) == before
    # Another config is another pipeline: refused, unless --force.
    other = _fast_cfg(repairs={"latin_glue": False}, write={"format": "parquet"}, minhash={"enabled": False})
    with pytest.raises(FtibError, match="another `ftib data clean`"):
        run_clean([src], out, other, progress=False)
    run_clean([src], out, other, force=True, progress=False)
    assert not list(out.glob("*.jsonl")) and len(read_documents((out,))) == 5


def test_foreign_output_folder_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text(S1 + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("x")
    with pytest.raises(FtibError, match="not an `ftib data clean` output"):
        run_clean([tmp_path / "a.txt"], out, CleanConfig(), progress=False)


@pytest.mark.slow
def test_ray_executor_on_a_local_instance(tmp_path):
    """The Ray path end to end on a local Ray instance (about 2 min on two busy cores)."""
    ray = pytest.importorskip("ray")
    (tmp_path / "a.txt").write_text(f"{S1}\n\n{S1}\n\n{S2}\n", encoding="utf-8")
    cfg = load_clean_config(None, {"executor": {"kind": "ray"}, "minhash": {"bands": 2, "threshold": 0.5}})
    try:
        run_clean([tmp_path / "a.txt"], tmp_path / "out", cfg, progress=False)
    finally:
        ray.shutdown()
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["exact_dedup"]["removed"] == 1 and rep["kept"]["documents"] == 2


def test_slurm_needs_a_partition(tmp_path):
    (tmp_path / "a.txt").write_text(S1 + "\n", encoding="utf-8")
    with pytest.raises(FtibError, match="partition"):
        run_clean([tmp_path / "a.txt"], tmp_path / "out", load_clean_config(None, {"executor": {"kind": "slurm"}}))


@pytest.mark.skipif(not (SHARED / "ntrex128_news_bo.txt").is_file(), reason="../shared/data is absent")
def test_real_text_repairs_and_duplicate_removal(tmp_path):
    news = (SHARED / "ntrex128_news_bo.txt").read_text(encoding="utf-8").splitlines()[:400]
    src = tmp_path / "in"
    src.mkdir()
    # A copy of one news line under another file: a duplicated document.
    (src / "news.txt").write_text("\n".join(news) + "\n", encoding="utf-8")
    dup = next(ln for ln in news if len(ln) > 60 and all(not c.isascii() for c in ln.replace(" ", "")))
    (src / "copy.txt").write_text(dup + "\n", encoding="utf-8")
    derge = (SHARED / "derge_kangyur_vol033_astasahasrika.txt").read_text(encoding="utf-8").split("\n\n")[:30]
    (src / "derge.txt").write_text("\n\n".join(derge) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    run_clean([src], out, _fast_cfg(read={"txt_mode": "line"}), progress=False)
    rep = json.loads((out / "report.json").read_text())
    kept = [json.loads(line)["text"] for p in sorted(out.glob("*.jsonl")) for line in p.read_text().splitlines()]
    # Specific repairs seen in NTREX (see the shared data README).
    assert rep["rules"]["doubled_vowel"]["fixes"] >= 1 and not any("གིིས" in t for t in kept)
    assert rep["rules"]["repeated_tsheg"]["fixes"] >= 1 and not any("\u0f0b\u0f0b" in t for t in kept)
    assert rep["rules"]["latin_glue"]["documents"] >= 50 and not any("AMsརང" in t for t in kept)
    assert any("Welsh AMs རང་ཉིད" in t for t in kept)
    # The duplicated line is removed once; the Derge control text is barely touched.
    assert rep["exact_dedup"]["removed"] >= 1
    assert sum(dup[10:50] in t for t in kept) == 1
    assert rep["read"]["bad_utf8_lines"] == 0


def test_cli_refuses_foreign_folder_and_empty_input(tmp_path, capsys):
    from ftib.core.cli import main

    (tmp_path / "a.txt").write_text(S1 + "\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("x")
    assert main(["data", "clean", str(tmp_path / "a.txt"), "--out", str(out), "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err
    (tmp_path / "e.txt").write_text("")
    assert main(["data", "clean", str(tmp_path / "e.txt"), "--out", str(tmp_path / "o2")]) == 2
    assert "empty" in capsys.readouterr().err


def test_slurm_and_local_executors_get_the_config(tmp_path):
    """The Slurm executor is built with the config's arguments (nothing is submitted)."""
    from ftib.data.clean.pipeline import Layout, _executor, build_stages

    (tmp_path / "a.txt").write_text(S1 + "\n", encoding="utf-8")
    cfg = load_clean_config(None, {"executor": {"kind": "slurm", "workers": 4, "tasks": 8,
                                                "slurm": {"partition": "cpu", "time": "01:00:00"}}})
    stages = build_stages(collect_inputs([tmp_path / "a.txt"]), cfg, Layout(out=tmp_path / "out"), progress=False)
    assert [s[0] for s in stages] == ["filter", "exact_sig", "exact_find", "minhash_sig", "minhash_buckets",
                                      "minhash_cluster", "write", "report"]
    assert [s[2] for s in stages] == [8, 8, 1, 8, 14, 1, 8, 1]
    name, steps, tasks = stages[0]
    ex = _executor("slurm", steps, tasks, cfg, tmp_path / "logs", None, name)
    assert (type(ex).__name__, ex.tasks, ex.workers, ex.partition, ex.time) == \
        ("SlurmPipelineExecutor", 8, 4, "cpu", "01:00:00")
    ex = _executor("local", steps, tasks, cfg, tmp_path / "logs", None, name)
    assert (type(ex).__name__, ex.tasks, ex.workers) == ("LocalPipelineExecutor", 8, 4)


def test_everything_dropped_is_an_empty_result_not_a_crash(tmp_path):
    (tmp_path / "a.txt").write_text("English only here.\n\nAnd here.\n", encoding="utf-8")
    cfg = load_clean_config(None, {"dedup": {"exact": False}, "minhash": {"enabled": False}})
    run_clean([tmp_path / "a.txt"], tmp_path / "out", cfg, progress=False)
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["read"]["documents"] == 2 and rep["kept"]["documents"] == 0
    assert rep["script"]["dropped_empty"] == 2
    assert len(list((tmp_path / "out" / "excluded" / "script").glob("*.jsonl.gz"))) == 1


def test_parquet_and_datasets_folder_inputs(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ftib.data.clean.pipeline import Layout, _readers

    pq.write_table(pa.table({"text": [S1, None, S2], "id": ["p1", "p0", "p2"]}), tmp_path / "a.parquet")
    datasets.Dataset.from_dict({"text": [S3]}).save_to_disk(str(tmp_path / "ds"))
    found = collect_inputs([tmp_path / "a.parquet", tmp_path / "ds"])
    assert len(found.parquet) == 1 and len(found.datasets) == 1
    readers = _readers(found, CleanConfig(), Layout(out=tmp_path / "out"), progress=False)
    texts = [d.text for r in readers for d in r.run()]
    assert texts == [S1, S2, S3]
    assert readers[0].stats["records_without_text"].total == 1  # counted, not silently skipped


def test_interrupted_run_resumes_to_the_same_output(tmp_path, monkeypatch):
    src = tmp_path / "a.txt"
    src.write_text(f"{S1}\n\n{S2}\n\n{S1}\n\n{S3}\n", encoding="utf-8")
    cfg = _fast_cfg()
    run_clean([src], tmp_path / "ref", cfg, progress=False)
    ref = sorted((p.name, p.read_bytes()) for p in (tmp_path / "ref").glob("*.jsonl"))

    def boom(self, data, rank=0, world_size=1):
        raise RuntimeError("interrupted")
        yield  # pragma: no cover

    with monkeypatch.context() as m:
        m.setattr(blocks.KeptDocStats, "run", boom)
        with pytest.raises(FtibError, match="interrupted.*run the same command again"):
            run_clean([src], tmp_path / "out", cfg, progress=False)
    logs = tmp_path / "out" / "_logs"
    assert (logs / "minhash_cluster" / "completions").is_dir() and not (logs / "write" / "completions").is_dir()
    run_clean([src], tmp_path / "out", cfg, progress=False)
    assert sorted((p.name, p.read_bytes()) for p in (tmp_path / "out").glob("*.jsonl")) == ref
