import json
import os
import subprocess
import sys
import textwrap

import pytest

from ftib.core.rundir import Manifest, MetricsSink, atomic_dir, atomic_write_json, recover_dir


def test_atomic_dir_replaces_on_success(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "w.bin").write_bytes(b"v1")
    with atomic_dir(target) as d:
        (d / "w.bin").write_bytes(b"v2")
    assert (target / "w.bin").read_bytes() == b"v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_exception_mid_write_keeps_previous(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "w.bin").write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "w.bin").write_bytes(b"half")
            raise RuntimeError("crash")
    assert (target / "w.bin").read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_process_killed_mid_write_keeps_previous(tmp_path):
    """A hard crash (no cleanup at all) in the middle of writing a checkpoint."""
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "w.bin").write_bytes(b"good")
    code = textwrap.dedent(f"""
        import os
        from ftib.core.rundir import atomic_dir
        with atomic_dir({str(target)!r}) as d:
            (d / "w.bin").write_bytes(b"partial")
            os._exit(9)
    """)
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == 9
    assert (target / "w.bin").read_bytes() == b"good"
    # The next write succeeds and leftovers are invisible (dot-prefixed temp folders).
    with atomic_dir(target) as d:
        (d / "w.bin").write_bytes(b"new")
    assert (target / "w.bin").read_bytes() == b"new"


def test_crash_between_renames_is_recovered(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "w.bin").write_bytes(b"good")
    os.replace(target, tmp_path / ".ckpt.old")  # the state right after the first rename
    recover_dir(target)
    assert (target / "w.bin").read_bytes() == b"good"


def test_atomic_json_and_manifest(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    (tmp_path / "manifest.json").write_text("{not json")
    from ftib.core import RunDirError

    with pytest.raises(RunDirError, match="not valid JSON"):
        Manifest.load(tmp_path)


def test_metrics_sink_appends_lines(tmp_path):
    sink = MetricsSink(tmp_path / "metrics.jsonl").child(stage="s")
    sink.log(0, {"loss": 2.0})
    sink.log(1, {"loss": 1.0})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"], r["loss"]) for r in rows] == [("s", 0, 2.0), ("s", 1, 1.0)]
