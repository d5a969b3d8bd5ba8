"""A server process that `cropcron up` spawns, owns and supervises (cropcron/supervise.py): the
embedded nats-server (cropcron/embedded.py) and Postgres (cropcron/embedded_pg.py).

Each child gets its own session (Ctrl-C in the terminal signals the whole foreground process
group, and the servers must outlive the services' shutdown, which still needs them) and a
parent-death signal (a `cropcron up` killed with SIGKILL leaves no orphan holding the store).
Its output is appended to its log file in the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("cropcron.embedded")

PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """An embedded server cannot be started or used: exit 1 with this message."""


class ChildError(EmbeddedError):
    """A start that failed. `permanent`: trying again cannot help (the port is taken)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def death_signal_preexec(sig: int) -> Any:
    parent = os.getpid()

    def preexec() -> None:
        # Runs in the child after any change of user (subprocess's user=), which would clear the
        # setting. Note: "parent" is the spawning *thread*; `up` spawns from its main thread.
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # the parent died before the prctl: no signal will come
            os.kill(os.getpid(), sig)

    return preexec


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def process_argv(pid: int) -> list[str]:
    """The command line of a running process ([] if gone, a zombie, or not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(arg) for arg in raw.split(b"\0")[:-1]]


def stop_pid(pid: int, sig: int) -> None:
    """`sig`, then SIGKILL after 15 s; returns once the process is gone (or after 5 s more)."""
    for send, wait in ((sig, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, send)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not process_argv(pid):
                return
            time.sleep(0.1)


def stop_orphans(argv: list[str], sig: int) -> None:
    """Stop processes running exactly `argv`: a server left by an `up` that died before its child
    (the caller holds the data dir's lock, so no live `up` owns them)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and process_argv(int(entry.name)) == argv:
            log.warning("an orphaned %s (pid %s) still runs; stopping it", Path(argv[0]).name, entry.name)
            stop_pid(int(entry.name), sig)


class ChildProcess:
    name = "child"  # for logs and alerts
    death_signal = signal.SIGTERM  # sent by the kernel if `up` dies
    stop_signal = signal.SIGTERM
    log_markers: tuple[str, ...] = ()  # substrings of the log lines that say why it failed

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.recycled: str | None = None  # why `up` stopped it on purpose, for the restart's alert

    # -- for subclasses ----------------------------------------------------------------
    def command(self) -> list[str]:
        raise NotImplementedError

    def popen_options(self) -> dict[str, Any]:
        return {}

    def check_can_start(self) -> None:
        """Raise ChildError(permanent=True) when a start cannot succeed (e.g. the port is taken)."""

    def is_ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------------
    def spawn(self) -> None:
        self.check_can_start()
        with contextlib.suppress(OSError):
            self._log_offset = self.log_path.stat().st_size
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(  # noqa: PLW1509 - preexec_fn only calls prctl
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=death_signal_preexec(self.death_signal),
                **self.popen_options())

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> int | None:
        """Its return code once it has exited (reaped here), else None."""
        return self.proc.poll() if self.proc is not None else None

    def _ready_or_raise(self) -> bool:
        code = self.exited()
        if code is not None:
            raise ChildError(f"{self.name} {describe_exit(code)} while starting: {self.reason() or 'no output'}")
        return self.is_ready()

    def _not_ready(self, timeout: float) -> ChildError:
        self.stop()
        return ChildError(f"{self.name} was not ready within {timeout:g}s: {self.reason() or 'no output'}")

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready_or_raise():
                return
            await asyncio.sleep(0.05)
        raise self._not_ready(timeout)

    def start(self, timeout: float) -> None:
        """spawn and wait until ready, blocking: for callers outside an event loop (tests, bench)."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready_or_raise():
                return
            time.sleep(0.05)
        raise self._not_ready(timeout)

    def reason(self, telling_only: bool = False) -> str:
        """Why it failed, from its log since the last spawn: the last line that says so (else the
        last line, unless `telling_only`), or ""."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                lines = log.read()[-20000:].decode("utf-8", "replace").splitlines()
        except OSError:
            lines = []
        lines = [line.strip() for line in lines if line.strip()]
        telling = [line for line in lines if any(m in line for m in self.log_markers)]
        last = (telling or ([] if telling_only else lines) or [""])[-1]
        return f"{last[:300]} (see {self.log_path})" if last else ""

    def recycle(self, why: str) -> None:
        """Stop it so that the supervisor starts it afresh (a broker whose store hit a write error
        stays broken until restarted)."""
        self.recycled = why
        self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
