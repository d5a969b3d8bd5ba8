"""`serve runner --processes N` (issue 12): N runner processes on the same consumers share the
triggers, each run once; a killed one is started again under its name; all stop with the parent.
A real nats-server and Postgres; the runners are processes killed by the PIDs they have."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_ENV, ROOT, System, apply_yaml, fetch, wait_for, wait_service

from cropcron import commands
from cropcron.child import EmbeddedError, process_argv
from cropcron.runner_pool import processes_from_env
from shared.bus import Bus

JOBS = """
jobs:
  - name: tile
    type: image_processing
    overlap: allow
    max_retries: 0
    run: ["{python}", "-c", "import time; time.sleep(0.3)"]
"""


def _children(pid: int) -> set[int]:
    """The runner processes `pid` started (not its job reaper)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    kids = {int(p) for p in path.read_text().split()} if path.exists() else set()
    return {k for k in kids if process_argv(k)[-2:] == ["serve", "runner"]}


def _start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "cropcron", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=ROOT)


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


async def test_three_runner_processes_share_the_work_restart_and_stop_together(
        system: System, bus: Bus, db_url: str, nats_server, tmp_path: Path) -> None:
    await apply_yaml(bus, JOBS)
    await system.start("history")
    env = {**os.environ, **FAST_ENV, "NATS_URL": nats_server.url, "CROPCRON_INSTANCE": "pool",
           "CROPCRON_CONCURRENCY": "2", "PYTHONPATH": str(ROOT)}
    parent = _start(["serve", "runner", "--processes", "3"], env, tmp_path / "runners.log")
    try:
        for name in ("pool", "pool-r1", "pool-r2"):
            await wait_service(bus, "runner", name)
        runs = [(await commands.run_now(bus, "tile", wait=None))["run_id"] for _ in range(30)]

        async def all_done() -> list[dict[str, object]] | None:
            rows = await fetch(db_url, "SELECT run_id, state, runner, attempt FROM runs WHERE job = 'tile'")
            done = [dict(r) for r in rows if r["state"] == "succeeded"]
            return done if len(done) == len(runs) else None

        done = await wait_for(all_done, 60, "30 runs succeeded")
        assert sorted(str(r["run_id"]) for r in done) == sorted(runs)
        assert {r["attempt"] for r in done} == {1}, "each run once"
        # two runs at a time per process, 0.3 s each: no one process took them all
        assert {r["runner"] for r in done} == {"pool", "pool-r1", "pool-r2"}

        extra = _children(parent.pid)
        assert len(extra) == 2, extra
        victim = min(extra)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> set[int] | None:
            now = _children(parent.pid)
            return now if len(now) == 2 and victim not in now else None

        await wait_for(replaced, 30, "the killed runner started again")
        survivors = _children(parent.pid)
        parent.send_signal(signal.SIGTERM)
        await asyncio.to_thread(parent.wait, 30)

        async def gone() -> bool:
            return not any(_alive(pid) for pid in survivors)

        await wait_for(gone, 30, "every runner process stopped with its parent")
        assert "starting it again" in (tmp_path / "runners.log").read_text()
    finally:
        leftover = _children(parent.pid)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in leftover:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_processes_must_be_a_small_whole_number() -> None:
    for bad in ("0", "65", "two"):
        out = subprocess.run([sys.executable, "-m", "cropcron", "serve", "runner", "--processes", bad],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 2 and "--processes: expected a whole number from 1 to 64" in out.stderr, out.stderr


def test_ups_runner_processes_default_to_half_the_cores_and_bad_values_are_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROPCRON_RUNNER_PROCESSES", raising=False)
    assert processes_from_env() == max(1, (os.cpu_count() or 1) // 2)
    monkeypatch.setenv("CROPCRON_RUNNER_PROCESSES", "4")
    assert processes_from_env() == 4
    for bad in ("0", "many", "65"):
        monkeypatch.setenv("CROPCRON_RUNNER_PROCESSES", bad)
        with pytest.raises(EmbeddedError, match="CROPCRON_RUNNER_PROCESSES must be a whole number from 1 to 64"):
            processes_from_env()
