"""Run directory: manifest, metrics log, atomic files and checkpoint directories.

Layout::

    <run_dir>/
      manifest.json          config, versions, seeds, git commit, data hashes,
                             per-stage / per-eval status, metrics and timings
      metrics.jsonl          one JSON object per logged step
      stages/<id>/           a stage's work_dir (its checkpoints live here)
      evals/<point>/<id>/    metrics.json + records.jsonl of one evaluation
      .ftib.lock             held (``fcntl.flock``) by the one process writing the run
      superseded/<time>-<why>/  earlier runs or stages moved aside, never deleted

Every file and checkpoint directory is written atomically: first into a temporary
sibling, then renamed into place, so a crash mid-write leaves the previous version
intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError, RunDirError

MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
MANIFEST_VERSION = 1
LOCK = ".ftib.lock"
SUPERSEDED = "superseded"
# The temporaries of atomic_write_bytes / atomic_dir: ``.<name>.tmp-<8 hex>``.
_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")


class RunDirLock:
    """One writer per run directory: an exclusive ``fcntl.flock`` on ``<run_dir>/.ftib.lock``.

    The lock belongs to the open file, so the operating system releases it when the
    process ends in any way (exit, exception, ``kill -9``); there is no stale lock to
    clean up. The file records the holder (pid, host, start time) for the message the
    next process prints. ``flock`` is advisory and local: on a network filesystem that
    does not forward it (some NFS setups) two hosts may both acquire it.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(fd)
            os.close(fd)
            raise RunDirError(
                f"run directory {self.path.parent} is in use by {holder}; wait for it to finish, "
                f"stop it, or use another --run-dir (lock: {self.path})"
            ) from None
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            return f"pid {info['pid']} on host {info['host']} (since {info.get('started', '?')})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process (it has not recorded its pid yet)"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file releases the lock
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def clean_stale_temporaries(root: Path) -> list[Path]:
    """Remove the ``.<name>.tmp-<hex>`` files and folders a killed process left under
    ``root`` (never under ``superseded/``); call only while holding :class:`RunDirLock`.
    Returns what was removed."""
    removed = []
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and SUPERSEDED in dirnames:
            dirnames.remove(SUPERSEDED)
        for name in list(dirnames):
            if _TMP_RE.match(name):
                shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
                removed.append(Path(dirpath) / name)
                dirnames.remove(name)
        for name in filenames:
            if _TMP_RE.match(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                removed.append(Path(dirpath) / name)
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def iter_jsonl(path: Path | str, text: str | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` of every non-blank line of a JSON Lines file (``text``:
    its already-read content); a line that is not JSON is an error naming file and line."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FtibError(f"{path}:{i}: not valid JSON ({exc.msg})") from exc
        yield i, value


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def _old_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def recover_dir(final: Path) -> None:
    """Undo a crash between the two renames of :func:`atomic_dir` (previous copy back)."""
    final = Path(final)
    old = _old_name(final)
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``final`` only if the block succeeds.

    If the block raises (or the process dies), ``final`` keeps its previous content and
    the temporary directory is removed (or ignored: its name starts with a dot).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(final)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as fh:
                    os.fsync(fh.fileno())
        old = _old_name(final)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_once(final: Path, ready: Callable[[], bool], build: Callable[[], Any]) -> bool:
    """Build the cache entry ``final`` once, however many processes ask for it at a time.

    ``ready()`` says whether the entry is complete; ``build()`` writes it (atomically, with
    :func:`atomic_dir`). When it is not ready, an exclusive ``fcntl.flock`` on the sibling
    ``.<name>.lock`` is taken (waiting for a process already building it), ``ready()`` is
    asked again, and only then ``build()`` runs. Without the lock two processes building
    the same entry at once each replace it, and one reads files the other's replace has
    just moved aside and deleted. Returns whether this call built it.
    """
    import fcntl
    import logging

    final = Path(final)
    if ready():
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.with_name(f".{final.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            logging.getLogger(__name__).info("waiting for another process building %s", final)
            fcntl.flock(fd, fcntl.LOCK_EX)
        if ready():
            return False
        build()
        return True
    finally:
        os.close(fd)  # releases the lock; the empty lock file stays (harmless, reused)


def sha256_path(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, or of a directory's relative file names and contents."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    return h.hexdigest()


class MetricsSink:
    """Appends one JSON object per call to ``metrics.jsonl`` (line-buffered, flushed).

    Only the main process writes (``enabled=False`` elsewhere).
    """

    def __init__(self, path: Path, *, scope: Mapping[str, Any] | None = None, enabled: bool = True):
        self.path = Path(path)
        self.scope = dict(scope or {})
        self.enabled = enabled

    def child(self, **scope: Any) -> MetricsSink:
        return MetricsSink(self.path, scope={**self.scope, **scope}, enabled=self.enabled)

    def log(self, step: int, values: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {**self.scope, "step": int(step), "time": round(time.time(), 3), **values}
        line = json.dumps(rec, ensure_ascii=False, allow_nan=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def discard(self, match: Mapping[str, Any], after_step: int = -1) -> int:
        """Drop the rows whose fields equal ``match`` and whose step is > ``after_step``
        (the rows of an attempt that is about to be redone), rewriting the log
        atomically; a torn last line (a kill mid-write) is dropped too. Returns how
        many rows were dropped."""
        if not self.enabled or not self.path.exists():
            return 0
        kept, dropped = [], 0
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # the torn tail of a killed write
                    dropped += 1
                    continue
                raise FtibError(f"{self.path}:{i + 1}: not valid JSON") from None
            if (isinstance(rec, dict) and all(rec.get(k) == v for k, v in match.items())
                    and int(rec.get("step", 0)) > after_step):
                dropped += 1
                continue
            kept.append(line)
        if dropped:
            atomic_write_text(self.path, "".join(x + "\n" for x in kept))
        return dropped


class Manifest:
    """``manifest.json`` of a run directory, rewritten atomically on every change."""

    def __init__(self, run_dir: Path, data: dict[str, Any], *, writable: bool = True):
        self.run_dir = Path(run_dir)
        self.data = data
        # Ranks other than 0 of a torchrun job keep an in-memory copy and never write.
        self.writable = writable

    @property
    def path(self) -> Path:
        return self.run_dir / MANIFEST

    @classmethod
    def load(cls, run_dir: Path) -> Manifest | None:
        path = Path(run_dir) / MANIFEST
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(
                f"{path} is not valid JSON ({exc}); the run directory is damaged - "
                f"move it away or pass --force to start over (the old manifest is kept)"
            ) from exc
        if not isinstance(data, dict) or data.get("manifest_version") != MANIFEST_VERSION:
            raise RunDirError(f"{path} is not an ftib manifest (version {MANIFEST_VERSION})")
        return cls(run_dir, data)

    def save(self) -> None:
        if not self.writable:
            return
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(self.path, self.data)

    def entry(self, section: str, key: str) -> dict[str, Any]:
        return self.data.setdefault(section, {}).setdefault(key, {"status": "pending"})

    def update(self, section: str, key: str, **values: Any) -> None:
        self.entry(section, key).update(values)
        self.save()


CACHE_ENV = "FTIB_CACHE_DIR"


def cache_dir() -> Path:
    """Where built assets are cached (presets, FTibWorld builds, reward encoders):
    ``$FTIB_CACHE_DIR``, default ``~/.cache/ftib``. The one home of this setting."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ftib")
