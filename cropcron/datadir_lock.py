"""The data dir of `cropcron up`, and one `up` per data dir.

A second `up` on the same data dir would start a second broker over the same JetStream store and
remove the first one's runtime.json when it stops. `up` therefore takes an flock on
<data-dir>/up.lock (holding its PID) before it starts anything; a second `up` is refused at once,
naming that PID. The kernel drops an flock with the process, so a lock left by `kill -9` is free
again. This module imports nothing heavy: `python -m cropcron up` checks the lock before the
CLI's imports (seconds on a busy edge box, see cropcron/__main__.py).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from shared.paths import default_data_dir

LOCK_NAME = "up.lock"


class DataDirError(Exception):
    """The data dir cannot be used (not a directory, not writable, locked): exit 2."""


class AlreadyRunning(DataDirError):
    pass


def prepare_data_dir(data_dir: Path) -> Path:
    """Create the data dir if needed; a clear DataDirError instead of a traceback otherwise."""
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirError(f"data dir {data_dir} exists and is not a directory; choose another with --data-dir")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"cannot create data dir {data_dir}: {exc.strerror or exc}; "
                           "choose another with --data-dir") from None
    return data_dir


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _refusal(data_dir: Path, pid: int | None) -> str:
    who = f"PID {pid}" if pid else "another process"
    return (f"another `cropcron up` ({who}) is already running on data dir {data_dir}; stop it first, "
            "or give this one its own --data-dir")


def _lock(fd: int) -> None:
    # a few tries: refuse_second_up's probe holds a shared lock for microseconds, which must not
    # turn away the `up` that is starting at that moment
    for _ in range(4):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.02)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


class DataDirLock:
    """flock on <data-dir>/up.lock for the life of this process. The file is opened without
    truncating it: a refused `up` must not wipe the holder's PID."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        prepare_data_dir(self.data_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise DataDirError(f"data dir {self.data_dir} is not writable ({self.path}: {exc.strerror or exc}); "
                               "fix its permissions or choose another with --data-dir") from None
        try:
            _lock(fd)
        except OSError as exc:
            pid = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise AlreadyRunning(_refusal(self.data_dir, pid)) from None
            raise DataDirError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # e.g. the disk is full: refuse rather than run with a PID-less lock
            os.close(fd)
            raise DataDirError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.fd = fd

    def release(self) -> None:
        # the file stays: removing it would let a third `up` lock a new inode while a second one
        # still waits on the old; closing drops the flock
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def refuse_second_up(argv: list[str]) -> str | None:
    """Early check for `cropcron up` (before the CLI's imports): the refusal message if another
    `up` holds the data dir's lock, else None. Side-effect free; DataDirLock.acquire, taken first
    thing in `up`, is what decides."""
    if not argv or argv[0] != "up":
        return None
    data_dir: Path | None = None
    for i, arg in enumerate(argv):
        if arg == "--data-dir" and i + 1 < len(argv):
            data_dir = Path(argv[i + 1])
        elif arg.startswith("--data-dir="):
            data_dir = Path(arg.split("=", 1)[1])
    data_dir = data_dir or default_data_dir()
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _refusal(data_dir, _read_pid(fd))
    finally:
        os.close(fd)
    return None
