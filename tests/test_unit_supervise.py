"""The supervisor's policy (cropcron/supervise.py) on real, trivial child processes: restart
after a death with an alert saying how it died and how long it was down, a limit per hour, and
giving up with the child's own words when it keeps failing to start. The embedded servers
themselves are killed in tests/test_up_supervise.py."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import wait_for

from cropcron.child import ChildError, ChildProcess
from cropcron.supervise import ComponentFailed, Supervisor
from shared.events import Alert

FAST = {"first_delay": 0.05, "max_delay": 0.1}


class Sleeper(ChildProcess):
    """Sleeps until killed; ready once it has written its marker line (so 'ready' is its own
    doing); `fail_with`: prints that and exits 1 instead, as a server with a corrupt store would."""

    name = "sleeper"
    log_markers = ("FATAL:",)

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp / "sleeper.log")
        self.fail_with = ""
        self.port_taken = False

    def command(self) -> list[str]:
        if self.fail_with:
            return [sys.executable, "-c", f"import sys; print({self.fail_with!r}, flush=True); sys.exit(1)"]
        return [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]

    def check_can_start(self) -> None:
        if self.port_taken:
            raise ChildError("port 127.0.0.1:1 is taken by another process", permanent=True)

    def is_ready(self) -> bool:
        return self.log_path.exists() and self.log_path.read_text().rstrip().endswith("up")


async def _started(tmp: Path) -> Sleeper:
    child = Sleeper(tmp)
    child.spawn()
    await child.wait_ready(30)
    return child


def _raised(alerts: list[Alert]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(alerts)

    return check


def _replaced(child: Sleeper, old: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return child.pid != old and child.exited() is None

    return check


async def test_a_killed_child_is_restarted_and_reported(tmp_path: Path) -> None:
    child = await _started(tmp_path)
    alerts: list[Alert] = []

    async def raise_alert(alert: Alert) -> None:
        alerts.append(alert)

    stop = asyncio.Event()
    watching = asyncio.create_task(Supervisor([child], raise_alert, limit=5, **FAST).run(stop))
    try:
        old = child.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        await wait_for(_replaced(child, old), 30, "the sleeper restarted")
        await wait_for(_raised(alerts), 10, "the restart's alert")
        alert = alerts[0]
        assert alert.kind == "component_restarted" and alert.details["component"] == "sleeper"
        assert alert.details["signal"] == signal.SIGKILL and alert.details["exit_code"] is None
        assert 0 < float(alert.details["down_seconds"]) < 10  # type: ignore[arg-type]
        assert "killed by SIGKILL" in alert.summary
    finally:
        stop.set()
        await watching
        child.stop()


async def test_more_deaths_an_hour_than_the_limit_end_supervision(tmp_path: Path) -> None:
    child = await _started(tmp_path)
    alerts: list[Alert] = []

    async def raise_alert(alert: Alert) -> None:
        alerts.append(alert)

    watching = asyncio.create_task(Supervisor([child], raise_alert, limit=2, **FAST).run(asyncio.Event()))
    # (the supervisor polls every 0.25 s: each death is seen and restarted before the next kill)
    try:
        for _ in range(2):
            pid = child.pid
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            await wait_for(_replaced(child, pid), 30, "the sleeper restarted")
        pid = child.pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        with pytest.raises(ComponentFailed, match=r"sleeper died 3 times within an hour \(now killed by SIGTERM"):
            await asyncio.wait_for(watching, 30)
        assert len(alerts) == 2
    finally:
        child.stop()


@pytest.mark.parametrize("cause", ["keeps failing", "port taken"])
async def test_a_restart_that_cannot_succeed_ends_supervision_with_the_reason(tmp_path: Path, cause: str) -> None:
    child = await _started(tmp_path)

    async def raise_alert(alert: Alert) -> None:
        raise AssertionError(f"no restart succeeded, yet: {alert}")

    watching = asyncio.create_task(Supervisor([child], raise_alert, limit=10, **FAST).run(asyncio.Event()))
    if cause == "port taken":
        child.port_taken = True
        expected = r"could not be restarted: port 127.0.0.1:1 is taken by another process"
    else:
        child.fail_with = "FATAL: could not write to file: No space left on device"
        expected = (r"could not be restarted after 5 attempts: sleeper exited with code 1 while starting: "
                    r"FATAL: could not write to file: No space left on device \(see .*sleeper.log\)")
    pid = child.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ComponentFailed, match=expected):
        await asyncio.wait_for(watching, 30)


def test_disk_reserve_sizes() -> None:
    from cropcron.child import EmbeddedError
    from cropcron.diskguard import parse_size

    assert parse_size("256M") == 256 * 2**20 and parse_size("1G") == 2**30 and parse_size("512k") == 512 * 1024
    assert parse_size("1.5GiB") == int(1.5 * 2**30) and parse_size("4096") == 4096
    for bad in ("", "lots", "-1M", "5X"):
        with pytest.raises(EmbeddedError, match="CROPCRON_DISK_RESERVE must be a size"):
            parse_size(bad)


def test_an_alert_delivered_by_its_raiser_is_not_routed_to_those_channels_again() -> None:
    from services.notifier.rules import DELIVERED_TO, route
    from shared.events import Alert, utcnow
    from shared.notify_config import parse_notifications

    config, problems = parse_notifications({"channels": {"a": {"type": "log"}, "b": {"type": "log"}},
                                            "rules": [{"channels": ["a", "b"]}]})
    assert config is not None and not problems
    alert = Alert(id="x", level="error", kind="disk_full", summary="full", source="up", at=utcnow())
    assert route(config, alert) == ["a", "b"]
    assert route(config, alert.model_copy(update={"details": {DELIVERED_TO: ["a"]}})) == ["b"]
