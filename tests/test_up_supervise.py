"""`cropcron up` heals itself and refuses a second copy (issue 9): its embedded nats-server and
Postgres killed with SIGKILL are restarted, runs resume and history loses no instant, a restart
is raised as an alert; a second `up` on the data dir exits 2; a restart that cannot succeed
ends `up` with exit 1 and the reason; a killed `up` leaves no orphan and no lock behind, and
servers left running on its data dir anyway are stopped by the next `up`.

One `up` (a separate process, killed children found through psutil) is shared by the tests of
this module: `SharedUp.running()` starts it again if an earlier test ended it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import FAST_ENV, ROOT, figure, reachable_temp_dir, wait_for

from cropcron import commands
from cropcron.embedded import runtime_connection
from shared import wire
from shared.bus import connect_once
from shared.queries import AlertsQuery, RunsQuery

CONFIG = """\
system: {timezone: UTC}
jobs:
  - {name: beat, type: data_cleanup, interval: 1s, catchup: all, catchup_window: 10m, overlap: allow,
     call: tests.jobs.calls:noop}
notifications:
  group_window: 1s
  channels: {journal: {type: log}}
  rules: [{name: default-kinds, channels: [journal]}]   # `when:` left to its default
"""


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL")}
    env.update(FAST_ENV, CROPCRON_DATA_DIR=str(data), PYTHONPATH=str(ROOT))
    return env


def _cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cropcron", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _cli_main(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """cropcron.cli.main itself, without the early check of `python -m cropcron`."""
    return subprocess.run([sys.executable, "-c", "import sys; from cropcron.cli import main; sys.exit(main())", *args],
                          env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def _occupy(port: int, killed: psutil.Process) -> socket.socket:
    """Listen on the port once the killed server has let go of it (it stays a zombie while `up`
    is stopped, but its sockets close when it dies)."""
    killed.kill()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + 10
    while True:
        try:
            blocker.bind(("127.0.0.1", port))
            break
        except OSError:
            if time.monotonic() > deadline:
                blocker.close()
                raise
            time.sleep(0.05)
    blocker.listen()
    return blocker


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


class SharedUp:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.config = root / "farm.yaml"
        self.config.write_text(CONFIG)
        self.env = _env(self.data)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "up-0.log"
        self.starts = 0

    async def running(self) -> SharedUp:
        if self.proc is None or self.proc.poll() is not None:
            self._spawn()
            await wait_for(self._two_runs, 60, "`cropcron up` running with runs in history")
        return self

    def _spawn(self) -> None:
        self.starts += 1
        self.log = self.root / f"up-{self.starts}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cropcron", "up", "--config", str(self.config)], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

    async def _two_runs(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.output()
        rows = await self.runs(datetime.now(UTC) - timedelta(minutes=5))
        return rows is not None and len(rows) >= 2

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def child(self, name: str) -> psutil.Process:
        found = [p for p in psutil.Process(self.pid).children() if p.name() == name]
        assert len(found) == 1, f"expected one {name} child of up, found {found}"
        return found[0]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def runtime(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.data / "runtime.json").read_text())
        return data

    async def runs(self, since: datetime) -> list[dict[str, Any]] | None:
        """beat's runs scheduled since then, or None while history cannot answer."""
        try:
            url, creds = runtime_connection(self.data) or ("", None)
            bus = await connect_once(url, "test", timeout=1, creds=creds)
        except (OSError, ValueError, KeyError):
            return None
        try:
            return await commands.history(bus, RunsQuery(job="beat", since=since, limit=2000))
        except commands.CommandError:
            return None
        finally:
            await bus.close()

    async def alerts(self) -> list[dict[str, Any]] | None:
        try:
            url, creds = runtime_connection(self.data) or ("", None)
            bus = await connect_once(url, "test", timeout=1, creds=creds)
        except (OSError, ValueError, KeyError):
            return None
        try:
            rows: list[dict[str, Any]] = await commands.request(bus, wire.HISTORY_ALERTS, AlertsQuery(limit=100))
            return rows
        except commands.CommandError:
            return None
        finally:
            await bus.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def shared_up() -> Iterator[SharedUp]:
    root = reachable_temp_dir("cropcron-supervise-")
    up = SharedUp(root)
    try:
        yield up
    finally:
        up.stop()
        shutil.rmtree(root, ignore_errors=True)


def _every_instant(rows: list[dict[str, Any]], start: datetime, end: datetime) -> list[dict[str, Any]]:
    """The rows of beat's instants in [start, end], asserting that no second between is missing."""
    window = sorted((r for r in rows if start <= _at(r["scheduled_at"]) <= end), key=lambda r: r["scheduled_at"])
    instants = [_at(r["scheduled_at"]) for r in window]
    assert instants, f"no rows between {start} and {end}"
    gaps = [(a, b) for a, b in zip(instants, instants[1:], strict=False) if b - a != timedelta(seconds=1)]
    assert not gaps, f"instants lost or doubled between {start} and {end}: {gaps}"
    assert instants[0] - start <= timedelta(seconds=1) and end - instants[-1] <= timedelta(seconds=1), instants
    return window


async def _kill_and_recover(up: SharedUp, name: str, request: pytest.FixtureRequest
                            ) -> tuple[datetime, list[dict[str, Any]]]:
    child = up.child(name)
    killed_at = datetime.now(UTC)
    child.kill()
    recovered_after = killed_at + timedelta(seconds=5)

    recorded: list[float] = []  # when history first showed a run that started after the kill

    async def recovered() -> list[dict[str, Any]] | None:
        assert up.proc is not None and up.proc.poll() is None, up.output()[-3000:]
        rows = await up.runs(killed_at - timedelta(seconds=10))
        if rows and not recorded and any(r["started_at"] and _at(r["started_at"]) > killed_at for r in rows):
            recorded.append((datetime.now(UTC) - killed_at).total_seconds())
        done = rows and any(_at(r["scheduled_at"]) >= recovered_after and r["state"] == "succeeded" for r in rows)
        # history catches up in its own order: events it nak'ed while Postgres was away come back
        # after later ones, so wait until the whole window is in (the check below says what is not)
        start = killed_at - timedelta(seconds=3)
        have = {_at(r["scheduled_at"]) for r in rows or [] if r["state"] == "succeeded"}
        first = start.replace(microsecond=0) + timedelta(seconds=1)
        due = [first + timedelta(seconds=i) for i in range(int((recovered_after - first).total_seconds()) + 1)]
        missing[:] = [t.isoformat() for t in due if t not in have]
        if not done:
            missing.append(f"no success yet at or after {recovered_after.isoformat()}")
        return rows if done and all(t in have for t in due) else None

    missing: list[str] = []  # what the last look lacked, for the failure message
    try:
        rows: list[dict[str, Any]] = await wait_for(recovered, 40, f"runs after the {name} was killed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still missing: {missing}; `up` said:\n{up.output()[-4000:]}") from None
    figure(request, f"[supervise] {name} killed: history showed a run started after the kill {recorded[0]:.2f}s after it")
    # every instant from before the kill to after the recovery has its row; catchup: all runs each
    window = _every_instant(rows, killed_at - timedelta(seconds=3), recovered_after)
    states = {r["state"] for r in window}
    assert states == {"succeeded"}, [(r["scheduled_at"], r["state"], r["reason"]) for r in window]
    return killed_at, rows


def _restarts(rows: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    return [a for a in rows if a["kind"] == "component_restarted" and a["details"].get("component") == component]


async def _restart_alert(up: SharedUp, component: str) -> dict[str, Any]:
    """The restart's alert, once the notifier has delivered it through the default rule."""

    async def delivered() -> bool:
        rows = await up.alerts()
        return bool(rows and any(d["channel"] == "journal" and d["outcome"] == "sent"
                                 for a in _restarts(rows, component) for d in a["deliveries"]))

    await wait_for(delivered, 30, f"the {component} restart's alert delivered to the log channel")
    out = _cli(["alerts", "--json", "--data-dir", str(up.data)], up.env)
    assert out.returncode == 0, out.stderr
    alerts = _restarts(json.loads(out.stdout), component)
    assert alerts, f"no component_restarted alert for {component}: {out.stdout[:2000]}"
    return alerts[0]


async def test_second_up_on_the_data_dir_is_refused(shared_up: SharedUp, request: pytest.FixtureRequest) -> None:
    up = await shared_up.running()
    runtime = (up.data / "runtime.json").read_text()
    started = time.monotonic()
    second = _cli(["up", "--config", str(up.config)], up.env)
    elapsed = time.monotonic() - started
    assert second.returncode == 2, second.stderr
    assert f"PID {up.pid}" in second.stderr and str(up.data) in second.stderr, second.stderr
    assert elapsed < 2, f"the second `up` took {elapsed:.1f}s to refuse"
    # the lock `up` itself takes (not only the early check before the CLI's imports)
    third = _cli_main(["up", "--config", str(up.config), "--data-dir", str(up.data)], up.env)
    assert third.returncode == 2 and f"PID {up.pid}" in third.stderr, third.stderr
    for refused in (second, third):
        assert "Traceback" not in refused.stderr, refused.stderr
    # the first is untouched: running, its runtime.json in place, history reachable through it
    assert up.proc is not None and up.proc.poll() is None
    assert (up.data / "runtime.json").read_text() == runtime
    history = _cli(["history", "--json", "--data-dir", str(up.data)], up.env)
    assert history.returncode == 0 and json.loads(history.stdout), history.stderr
    figure(request, f"[supervise] second `up` refused in {elapsed:.2f}s")


async def test_killed_broker_is_restarted_and_runs_resume(shared_up: SharedUp, request: pytest.FixtureRequest) -> None:
    up = await shared_up.running()
    old_port = up.runtime()["nats_url"]
    killed_at, rows = await _kill_and_recover(up, "nats-server", request)
    first = min(_at(r["started_at"]) for r in rows if r["started_at"] and _at(r["started_at"]) > killed_at)
    figure(request, f"[supervise] nats-server killed: first run {(first - killed_at).total_seconds():.2f}s after the kill")
    assert first - killed_at < timedelta(seconds=10)
    assert up.runtime()["nats_url"] == old_port  # same port: the services reconnected by themselves
    alert = await _restart_alert(up, "nats-server")
    assert alert["level"] == "warning" and "SIGKILL" in alert["summary"], alert
    assert "Traceback" not in up.output(), up.output()[-3000:]


async def test_killed_postgres_is_restarted_and_history_catches_up(shared_up: SharedUp, request: pytest.FixtureRequest) -> None:
    up = await shared_up.running()
    killed_at, rows = await _kill_and_recover(up, "postgres", request)
    alert = await _restart_alert(up, "postgres")
    figure(request, f"[supervise] postgres killed: down {alert['details']['down_seconds']}s; history rows for every instant")
    # the cleared postmaster.pid and the password still work: the final check goes through the CLI
    out = _cli(["history", "--json", "--limit", "200", "--data-dir", str(up.data)], up.env)
    assert out.returncode == 0, out.stderr
    seen = {r["scheduled_at"] for r in json.loads(out.stdout)}
    assert {r["scheduled_at"] for r in rows if _at(r["scheduled_at"]) >= killed_at} <= seen
    assert "Traceback" not in up.output(), up.output()[-3000:]


async def test_a_restart_that_cannot_succeed_ends_up_with_the_reason(shared_up: SharedUp) -> None:
    up = await shared_up.running()
    nats, postgres = up.child("nats-server"), up.child("postgres")
    port = int(up.runtime()["nats_url"].rsplit(":", 1)[1])
    os.kill(up.pid, signal.SIGSTOP)  # so that it cannot restart the broker before the port is taken
    try:
        blocker = _occupy(port, nats)
    finally:
        os.kill(up.pid, signal.SIGCONT)
    try:
        assert up.proc is not None
        code = up.proc.wait(60)
    finally:
        blocker.close()
    output = up.output()
    assert code == 1, output[-3000:]
    assert f"the embedded nats-server could not be restarted: port 127.0.0.1:{port} is taken" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not postgres.is_running(), "the embedded Postgres outlived `up`"
    assert not (up.data / "runtime.json").exists()


async def test_kill9_of_up_leaves_no_orphan_and_frees_the_lock(shared_up: SharedUp) -> None:
    up = await shared_up.running()
    children = [up.child("nats-server"), up.child("postgres")]
    argvs = [c.cmdline() for c in children]
    pgdata = up.data / "postgres"
    assert up.proc is not None
    up.proc.kill()
    up.proc.wait()
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"children outlived a killed `up`: {alive}"
    # as if they had (an `up` killed between fork and exec of a child): the same servers again,
    # not children of any `up`; the next `up` stops them rather than run a second pair on the store
    orphans = _orphans(argvs, pgdata.stat().st_uid)
    try:
        await wait_for(_postmaster_ready(pgdata, orphans[1].pid), 30, "the orphaned Postgres ready")
        # the flock died with `up`: a new one starts on the same data dir (over its stale runtime.json)
        await shared_up.running()
        assert up.runtime()["pid"] == up.pid
        assert [o.poll() for o in orphans] == [0, 0], "the orphaned servers were not stopped"
        assert "an orphaned nats-server" in up.output() and "an orphaned Postgres" in up.output(), up.output()
    finally:
        for orphan in orphans:
            if orphan.poll() is None:
                orphan.kill()
                orphan.wait()


def _orphans(argvs: list[list[str]], pg_owner: int) -> list[subprocess.Popen[bytes]]:
    """The broker and Postgres started again, as the test's own children (Postgres as its owner)."""
    nats, postgres = argvs
    as_owner = {"user": pg_owner} if os.geteuid() == 0 else {}
    return [subprocess.Popen(nats, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
            subprocess.Popen(postgres, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                             **as_owner)]  # type: ignore[call-overload]


def _postmaster_ready(pgdata: Path, pid: int) -> Callable[[], Awaitable[bool]]:
    async def ready() -> bool:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0] == str(pid) and lines[7].strip() == "ready"

    return ready
