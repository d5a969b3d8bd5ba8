"""More runner processes beside the one a `serve runner` or `cropcron up` process runs itself
(issue 12): `serve runner --processes N`, and `up`'s CROPCRON_RUNNER_PROCESSES (default: half the
cores). Each extra runner is a `cropcron serve runner` process with its own NATS connection on the
same durable consumers, so the broker shares the triggers out; a job's own process is unchanged.

A runner that dies is started again (0.5 s, doubling to 30 s between tries while it keeps dying
young); its triggers come back to the others after ack_wait, as for any lost runner. The extra
runners die with their parent (a parent-death signal) and are stopped with it (SIGTERM, then
SIGKILL after the kill grace and 10 s)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from asyncio.subprocess import Process

from cropcron.child import EmbeddedError, death_signal_preexec, describe_exit

log = logging.getLogger("cropcron.runners")

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_AFTER = 60.0  # a runner that lived this long starts the back-off afresh when it dies


def default_processes() -> int:
    """Runner processes for `up` when CROPCRON_RUNNER_PROCESSES is not set: half the cores, so the
    broker, history and Postgres keep the other half."""
    return max(1, (os.cpu_count() or 1) // 2)


def processes_from_env() -> int:
    raw = os.environ.get("CROPCRON_RUNNER_PROCESSES", "").strip()
    if not raw:
        return default_processes()
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:  # `up` exits 1 with this line before anything starts
        raise EmbeddedError(f"CROPCRON_RUNNER_PROCESSES must be a whole number from 1 to 64, got {raw!r}")
    return value


class RunnerPool:
    """`extra` runner processes, named <instance>-r<i>, kept running until stop."""

    def __init__(self, extra: int, instance: str, stop_grace: float) -> None:
        self.names = [f"{instance}-r{i}" for i in range(1, extra + 1)]
        self.stop_grace = stop_grace
        self.procs: dict[str, Process] = {}
        self.restarts = 0

    async def _spawn(self, name: str) -> Process:
        env = {**os.environ, "CROPCRON_INSTANCE": name, "CROPCRON_HTTP_PORT": "0"}
        env.pop("CROPCRON_HTTP_URL_FILE", None)  # that file is the parent's endpoint
        # (asyncio's child watcher, not a thread per process blocked in wait())
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cropcron", "serve", "runner", env=env,
                                                    stdin=subprocess.DEVNULL,
                                                    preexec_fn=death_signal_preexec(signal.SIGTERM))
        log.info("runner %s started (pid %d)", name, proc.pid)
        return proc

    async def run(self, stop: asyncio.Event) -> None:
        if not self.names:
            return
        tasks = [asyncio.create_task(self._keep(name, stop)) for name in self.names]
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._stop_all()

    async def _keep(self, name: str, stop: asyncio.Event) -> None:
        delay = FIRST_DELAY
        while not stop.is_set():
            began = time.monotonic()
            proc = self.procs[name] = await self._spawn(name)
            code = await proc.wait()
            if stop.is_set():
                return
            if time.monotonic() - began >= HEALTHY_AFTER:
                delay = FIRST_DELAY
            log.error("runner %s (pid %d) %s; starting it again in %.1fs", name, proc.pid, describe_exit(code), delay)
            self.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, MAX_DELAY)

    async def _stop_all(self) -> None:
        live = [p for p in self.procs.values() if p.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace + 10
        for proc in live:
            try:
                await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                log.error("runner pid %d did not stop in time; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
