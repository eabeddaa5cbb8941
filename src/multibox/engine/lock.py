"""A training run's claim on its output folder: an advisory lock that ends with its process.

:func:`lock_out_dir` takes ``fcntl.flock`` on ``<out_dir>/.train.lock`` and writes who holds it (pid, host, start
time, command) into the file, for the message a second run with the same folder gets (:class:`RunLockedError`).
The kernel releases a flock when its process ends, however it ends (``kill -9`` included), so a crash leaves no
lock behind: the next run takes it, and warns that the previous holder (whose record is still in the file) ended
without releasing it. The file is emptied on release, never deleted (deleting a lock file would let two processes
lock two different files of the same name). Where ``fcntl`` is missing (Windows) no lock is taken. On NFS, Linux
implements flock with the server's locks, which work across hosts when the lock service runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLockedError", "lock_out_dir"]

#: The lock file's name inside the output folder.
LOCK_NAME = ".train.lock"


class RunLockedError(RuntimeError):
    """The output folder is in use by another training run; the message names the folder and that process."""


def _read(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict | None) -> str:
    if record is None:
        return "a process that has not written its details yet"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started", 0))))
    command = str(record.get("command", ""))[:120]
    return f"pid {record.get('pid')} on {record.get('host')}, started {started}" + (f": {command}" if command else "")


def _write(fd: int) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(record).encode())
    os.fsync(fd)


@contextlib.contextmanager
def lock_out_dir(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``out_dir`` (created if needed) for one training run while the ``with`` block runs.

    Yields:
        The lock file.

    Raises:
        RunLockedError: another process holds it (the message names the folder and the process: pid, host, start
            time and command).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    if fcntl is None:  # pragma: no cover - not POSIX
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{out_dir} is in use by another training run ({_describe(_read(fd))}); wait for it to end, stop it, "
                "or choose another folder (--set train.out_dir=...)"
            ) from None
        previous = _read(fd)
        if previous is not None:
            warnings.warn(
                f"{out_dir}: taking over the lock of a run that ended without releasing it ({_describe(previous)})",
                stacklevel=3,
            )
        _write(fd)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
