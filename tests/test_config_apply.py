"""Applying configs to a running system: edits without restarts; bad files refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, NatsProcess, System, apply_yaml, fetch, wait_for

from shared.bus import Bus
from shared.catalog import read_specs

GOOD = """
system: {timezone: Asia/Seoul}
jobs:
  - {name: alpha, type: data_cleanup, schedule: "* * * * * *", overlap: allow, call: tests.jobs.calls:noop}
"""
EDITED = """
system: {timezone: Asia/Seoul}
jobs:
  - {name: beta, type: image_processing, schedule: "*/2 * * * * *", overlap: allow, call: tests.jobs.calls:noop}
"""
BAD = """
system: {timezone: Nowhere/Special}
jobs:
  - {name: beta, type: potato, schedule: "0 0 31 2 *", run: [echo]}
  - {name: beta, type: data_cleanup, max_retries: -1, run: [echo]}
  - {name: gamma, type: data_cleanup, schedule: "61 * * * *"}
"""


def cli(args: list[str], nats_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": nats_url, "PYTHONPATH": str(ROOT), "CROPCRON_DATA_DIR": str(tmp_path / "d")}
    return subprocess.run([sys.executable, "-m", "cropcron", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


async def test_apply_adds_removes_and_edits_jobs_without_restart(system: System, bus: Bus, db_url: str,
                                                                 nats_server: NatsProcess, tmp_path: Path) -> None:
    await apply_yaml(bus, GOOD)
    await system.start("history", "runner", "timer")

    async def count(job: str) -> int:
        return len(await fetch(db_url, "SELECT 1 FROM runs WHERE job = $1 AND state = 'succeeded'", job))

    await wait_for(lambda: _ge(count("alpha"), 2), 15, "alpha runs")
    edited = tmp_path / "edited.yaml"
    edited.write_text(EDITED)
    out = cli(["apply", str(edited)], nats_server.url, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "1 added" in out.stdout and "1 removed" in out.stdout
    await wait_for(lambda: _ge(count("beta"), 2), 15, "runs of the added job")
    alpha_after = await count("alpha")
    beta = await fetch(db_url, "SELECT scheduled_at FROM runs WHERE job = 'beta' ORDER BY scheduled_at")
    assert all(r["scheduled_at"].second % 2 == 0 for r in beta)
    await wait_for(lambda: _ge(count("beta"), 4), 15, "more runs of beta")
    assert await count("alpha") <= alpha_after + 1, "a removed job kept running"


async def _ge(awaitable, n: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await awaitable >= n)


async def test_bad_config_is_refused_and_running_config_kept(bus: Bus, nats_server: NatsProcess,
                                                             tmp_path: Path) -> None:
    await apply_yaml(bus, GOOD)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    for command in (["validate", str(bad)], ["apply", str(bad)]):
        out = cli(command, nats_server.url, tmp_path)
        assert out.returncode == 2, out
        assert "Traceback" not in out.stderr
        for expected in ("unknown time zone 'Nowhere/Special'", "job 'beta': field 'type': unknown type 'potato'",
                         "job 'beta': field 'name': duplicate job name", "never fires",
                         "field 'max_retries'", "job 'gamma': field 'schedule': invalid cron expression",
                         "job 'gamma': definition: give exactly one of run"):
            assert expected in out.stderr, (expected, out.stderr)
    assert set(await read_specs(bus.js)) == {"alpha"}
    out = cli(["up", "--config", str(bad), "--data-dir", str(tmp_path / "up")], nats_server.url, tmp_path)
    assert out.returncode == 2 and "duplicate job name" in out.stderr
    assert set(await read_specs(bus.js)) == {"alpha"}


def test_cli_user_errors_are_clear(tmp_path: Path) -> None:
    env_url = "nats://127.0.0.1:1"  # nothing listens there
    cases = [
        (["history", "--limit", "abc"], 2, "argument --limit: expected a number"),
        (["history", "--limit", "2.5"], 2, "expected a whole number"),
        (["history", "--since", "yesterdayish"], 2, "expected a duration like 2h or an ISO time"),
        (["stats", "--days", "-3"], 2, "must be greater than 0"),
        (["validate", str(tmp_path / "missing.yaml")], 2, "cannot read"),
        (["jobs"], 1, "cannot reach NATS"),
        (["frobnicate"], 2, "invalid choice"),
    ]
    for args, code, text in cases:
        out = cli(args, env_url, tmp_path)
        assert out.returncode == code, (args, out)
        assert text in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
