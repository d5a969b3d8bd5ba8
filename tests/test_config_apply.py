"""Applying configs to a running system: edits without restarts; bad files refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, NatsProcess, System, apply_yaml, fetch, wait_for

from cropcron.embedded import free_port, nats_server_binary, wait_port, write_nats_config
from shared import wire
from shared.bus import Bus
from shared.catalog import read_bucket, read_specs
from shared.watch_config import WatchConfig

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


THREE = """
folder_watches:
  - {{name: drops, path: "{root}"}}
jobs:
  - {{name: alpha, type: data_cleanup, schedule: "*/5 * * * * *", overlap: allow, call: tests.jobs.calls:noop}}
  - {{name: beta, type: data_cleanup, interval: 1h, call: tests.jobs.calls:noop}}
  - {{name: gamma, type: data_cleanup, interval: 1h, call: tests.jobs.calls:noop, description: "{big}"}}
"""


async def test_apply_is_all_or_nothing_when_the_broker_refuses_part_of_it(bus: Bus, nats_server: NatsProcess,
                                                                          tmp_path: Path) -> None:
    await apply_yaml(bus, GOOD)
    before = await read_specs(bus.js)
    # the jobs bucket takes messages of at most 2 KiB: the third job of the new config is refused by
    # the broker itself, after the others were sent (key-by-key writes stored the first two)
    info = await bus.js.stream_info("KV_cropcron_jobs")
    info.config.max_msg_size = 2048
    await bus.js.update_stream(info.config)
    path = tmp_path / "three.yaml"
    path.write_text(THREE.format(root=tmp_path, big="g" * 3000))
    out = cli(["apply", str(path)], nats_server.url, tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert "config not applied: the broker refused the change to cropcron_jobs" in out.stderr
    assert "nothing of it was stored" in out.stderr
    assert await read_specs(bus.js) == before, "part of the new config was stored"
    assert await read_bucket(bus.js, wire.KV_WATCHES, WatchConfig) == {}, "the new watch was left behind"
    # the same file, storable: applied whole
    path.write_text(THREE.format(root=tmp_path, big="small"))
    out = cli(["apply", str(path)], nats_server.url, tmp_path)
    assert out.returncode == 0, out.stderr
    assert set(await read_specs(bus.js)) == {"alpha", "beta", "gamma"}
    assert set(await read_bucket(bus.js, wire.KV_WATCHES, WatchConfig)) == {"drops"}


def test_apply_refuses_what_the_broker_cannot_store_before_writing_anything(tmp_path: Path) -> None:
    # a broker with a 64 KiB max_payload: a 100 KiB job passes validate (256 KiB) but not this broker
    store = tmp_path / "nats"
    port = free_port()
    write_nats_config(store / "js", port, store / "nats.conf")
    with (store / "nats.conf").open("a") as conf:
        conf.write("max_payload: 65536\n")
    proc = subprocess.Popen([nats_server_binary(), "-c", str(store / "nats.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, time.monotonic() + 15, proc)
        url = f"nats://127.0.0.1:{port}"
        good = tmp_path / "good.yaml"
        good.write_text(GOOD)
        assert cli(["apply", str(good)], url, tmp_path).returncode == 0
        path = tmp_path / "three.yaml"
        path.write_text(THREE.format(root=tmp_path, big="g" * 100_000))
        assert cli(["validate", str(path)], url, tmp_path).returncode == 0
        out = cli(["apply", str(path)], url, tmp_path)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert "job 'gamma' is 98 KiB stored; the broker takes at most 63 KiB" in out.stderr
        assert "Nothing was applied" in out.stderr
        jobs = cli(["jobs", "--json"], url, tmp_path)
        assert [j["name"] for j in json.loads(jobs.stdout)] == ["alpha"]
    finally:
        proc.kill()
        proc.wait()
