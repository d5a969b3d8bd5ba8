"""Job processes die with their runner, however the runner dies.

A job runs in its own process group (so a timeout kills everything it started), which also means
nothing kills it when the runner is killed with SIGKILL: it used to finish unsupervised while the
broker redelivered its trigger to another attempt, which ran it again (twice the effect, once
concurrently despite `concurrency: 1`). PR_SET_PDEATHSIG would only reach the group's leader, and
setting it needs a preexec_fn, which is not safe in a process with threads.

So each runner process starts one small reaper process and tells it, over a pipe, the process
group of every job it starts ("+PGID") and ends ("-PGID"). The runner is the only writer: when it
dies, for any reason, the reaper reads end-of-file and kills the groups still listed (SIGTERM,
then SIGKILL after the grace period). A runner that stops cleanly ends its jobs first, so the list
is empty by then. The reaper ignores SIGINT and SIGTERM (Ctrl-C signals the whole foreground
process group): it outlives the runner by design and exits at end-of-file.

    python -m services.runner.reaper GRACE_SECONDS      (stdin: the pipe from the runner)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger("cropcron.runner")


class Reaper:
    """The runner's side: starts the reaper and reports job process groups to it."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "services.runner.reaper", f"{self.grace:g}"],
                                      stdin=subprocess.PIPE, close_fds=True)

    def _send(self, line: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            # one short line is one atomic pipe write; the reaper reads continuously
            os.write(self._proc.stdin.fileno(), line.encode())
        except OSError as exc:  # the reaper died: jobs still run, they just lose this safety net
            log.error("runner: job reaper gone (%r); jobs may outlive a killed runner", exc)
            self._proc = None

    def add(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def remove(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def stop(self) -> None:
        """Clean stop: the runner has ended its jobs; closing the pipe lets the reaper exit."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None


def _kill(groups: set[int], grace: float) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = set(groups)
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = {g for g in alive if _exists(g)}
    for pgid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grace = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if len(line) > 1 and line[1:].isdigit():
            (groups.add if line[:1] == b"+" else groups.discard)(int(line[1:]))
    if groups:  # end of file with jobs listed: the runner died under them
        sys.stderr.write(f"cropcron job reaper: the runner is gone; killing {len(groups)} job process group(s): "
                         + " ".join(map(str, sorted(groups))) + "\n")
        sys.stderr.flush()
        _kill(groups, grace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
