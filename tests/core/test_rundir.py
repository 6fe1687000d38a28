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


_BUILD_ONCE_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ftib.core.rundir import atomic_dir, build_once

    final, log = Path(sys.argv[1]), Path(sys.argv[2])

    def build():
        with open(log, "a") as fh:
            fh.write("built\\n")
        with atomic_dir(final) as tmp:
            time.sleep(1.0)  # long enough that the other process asks while this one builds
            (tmp / "done").write_text("ok")

    built = build_once(final, (final / "done").is_file, build)
    assert (final / "done").read_text() == "ok"
    print("built" if built else "reused")
""")


def test_build_once_builds_a_cache_entry_once_when_two_processes_ask_at_once(tmp_path):
    """Two processes needing the same cache entry (two `--jobs 2` runs on a fresh cache
    building the same reward encoder) must not both build it: one replacing the entry
    while the other reads it loses files under the reader."""
    final, log = tmp_path / "cache" / "entry", tmp_path / "builds.log"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_ONCE_WORKER, str(final), str(log)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert sorted(o[0].strip() for o in outs) == ["built", "reused"]
    assert log.read_text().splitlines() == ["built"]


def test_build_once_does_nothing_when_the_entry_is_ready(tmp_path):
    from ftib.core.rundir import build_once

    calls = []
    assert build_once(tmp_path / "e", lambda: True, lambda: calls.append(1)) is False
    assert calls == [] and not (tmp_path / ".e.lock").exists()
