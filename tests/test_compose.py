"""compose.yaml brought up for real, in Docker: the image built once, the stack up with
compose.test.yaml on top (host networking and loopback ports, as docker-here requires), then the
deployment's promises checked against it. One stack for the module; the tests run in order.

Docker comes from ../shared/tools/docker-here (.ci/run starts it and exports DOCKER_HOST). In CI
a Docker that cannot be reached fails the tests; elsewhere they are skipped with the reason.
Select or deselect them with `-m compose` / `-m "not compose"`. Timings (build, up, first run)
are printed and written to test-output/compose-timings.json.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import broker_boundaries as boundaries
import httpx
import pytest
from compose_kit import TOKEN, Stack, compose_stack
from conftest import figure, wait_for

from shared.events import file_run_id
from shared.files import event_for

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

TIMINGS: dict[str, float] = {}

CONFIG = """
system: {timezone: UTC}
jobs:
  - name: tick                      # every even second: instants are easy to account for
    type: folder_monitoring
    schedule: "*/2 * * * * *"
    overlap: allow
    catchup: all
    catchup_window: 10m
    max_retries: 3
    retry_delay: 1s
    timeout: 30s
    run: ["{python}", jobs/probe.py, data/ticks.jsonl, "{run_id}", "{attempt}", "{scheduled_at}"]
  - name: idle                      # paused by the test: it must stay paused across down/up
    type: report_generation
    interval: 1h
    run: ["{python}", jobs/probe.py, data/idle.jsonl, "{run_id}", "{attempt}", "-"]
  - name: on_upload                 # one run per file dropped into the uploads folder
    type: image_processing
    on_file: drops
    run: ["{python}", jobs/probe.py, data/files.jsonl, "{run_id}", "{attempt}", "{file.path}"]
  - name: doomed                    # fails once, on demand: its dead run is an alert for Slack
    type: data_cleanup
    max_retries: 0
    run: ["{python}", -c, "raise SystemExit(3)"]
folder_watches:
  - {name: drops, path: /uploads, extensions: [.jpg], settle: 1s, rescan_interval: 5s}
notifications:
  group_window: 1s
  overdue: {enabled: false}
  channels:
    ops-slack: {type: slack, webhook_url_env: CROPCRON_SLACK_WEBHOOK}
  rules:
    - {when: [dead], channels: [ops-slack]}
"""


def _report(request: pytest.FixtureRequest, line: str) -> None:
    figure(request, f"[compose] {line}")


# the listeners' ports, picked by the test: the variables compose.test.yaml reads
PORTS = {"nats": "CROPCRON_TEST_NATS_PORT", "nats_monitor": "CROPCRON_TEST_NATS_MONITOR_PORT",
         "pg": "CROPCRON_TEST_PG_PORT", "dashboard": "CROPCRON_TEST_DASHBOARD_PORT"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    with compose_stack(tmp_path_factory.mktemp("compose"), request, name="compose", config=CONFIG,
                       files=("compose.yaml", "compose.test.yaml"), port_env=PORTS, timings=TIMINGS,
                       label="compose") as s:
        yield s


@pytest.fixture(autouse=True)
async def _bus_per_test(stack: Stack) -> Any:
    """Each test has its own event loop: the host-side NATS connection lives and dies with it."""
    yield
    await stack.close_bus()


LONG_RUNNING = ("nats", "postgres", "timer", "runner", "history", "watcher", "notifier", "dashboard", "apply")


def test_every_service_is_healthy(stack: Stack) -> None:
    rows = stack.services()
    for service in LONG_RUNNING:
        found = [r for r in rows.values() if r["Service"] == service]
        assert found, f"no {service} container: {list(rows)}"
        for row in found:
            assert row["State"] == "running" and row["Health"] == "healthy", (service, row["Status"])
    # the healthcheck itself, as compose runs it: ready, with what it checked
    out = stack.compose("exec", "-T", "runner", "python", "-m", "cropcron.healthcheck", "--json")
    report = json.loads(out.stdout)
    assert report == {"ready": True, "nats": "connected", "jetstream": "ok", "services": {"runner": "ready"}}


async def test_config_applied_and_a_run_in_history(stack: Stack, request: pytest.FixtureRequest) -> None:
    jobs = {j["name"]: j for j in stack.cli("jobs")}
    assert set(jobs) == {"tick", "idle", "on_upload", "doomed"}
    first = await wait_for(lambda: stack.runs("tick", "succeeded"), 60, "a succeeded tick in history")
    TIMINGS["first_run_s"] = time.time() - TIMINGS["up_done_at"]
    _report(request, f"first run in history {TIMINGS['first_run_s']:.1f} s after the stack was up")
    rows = stack.cli("history", "--job", "tick", "--state", "succeeded", "--limit", "5")
    assert rows and {r["run_id"] for r in rows} & {r["run_id"] for r in first}
    # the job ran from the read-only config folder and wrote into the jobs' data volume
    ledger = stack.ledger("ticks.jsonl")
    assert ledger, "the job's ledger is not in the data volume"
    assert not any(e["config_writable"] for e in ledger), "a job could write the config folder"


def test_up_in_the_image_says_the_embedded_extra_is_missing(stack: Stack) -> None:
    """The image has no [embedded] extra: `cropcron up` without a NATS_URL (then without a
    DATABASE_URL) says how to get it, and exits 1 without a traceback."""
    for unset in ("NATS_URL", "DATABASE_URL"):
        out = stack.compose("run", "--rm", "-T", "-e", f"{unset}=", "cli", "up", "--config", "/config/farm.yaml",
                            check=False, timeout=120)
        assert out.returncode == 1, (unset, out.stdout, out.stderr)
        assert "pip install 'cropcron[embedded]'" in out.stderr and "Traceback" not in out.stderr, out.stderr


async def test_a_dead_run_reaches_slack_through_the_webhook_secret_file(stack: Stack) -> None:
    assert stack.cli("run", "doomed", "--wait", "60", check=False)["state"] == "dead"  # (exit 1: it failed)

    async def delivered() -> list[Any]:
        return stack.slack.texts()

    texts = await wait_for(delivered, 60, "the notifier's Slack message (webhook from the secret file)")
    assert "doomed" in texts[0]


async def test_dashboard_answers_on_loopback_with_the_token(stack: Stack) -> None:
    url = f"http://127.0.0.1:{stack.ports['dashboard']}/api/jobs"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(url)).status_code == 401
        ok = await client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200, ok.text
    assert "tick" in ok.text


async def _drop_file(stack: Stack, name: str) -> dict[str, Any]:
    """A drone upload: written as .part, renamed when complete; its on_file job must run."""
    part = stack.tmp / "uploads" / f"{name}.part"
    part.write_bytes(os.urandom(2048))
    part.chmod(0o644)
    part.rename(part.with_suffix(""))
    stack.dropped.append(name)

    async def ran() -> list[dict[str, Any]] | None:
        rows = await stack.runs("on_upload", "succeeded")
        return rows if len(rows) >= len(stack.dropped) else None

    rows: list[dict[str, Any]] = await wait_for(ran, 60, f"the on_file run for {name}")
    return rows[0]


async def test_a_file_dropped_into_uploads_runs_its_on_file_job(stack: Stack) -> None:
    await _drop_file(stack, "IMG_0001.jpg")
    paths = [e["what"] for e in stack.ledger("files.jsonl")]
    assert paths == ["/uploads/IMG_0001.jpg"]


async def test_broker_users_keep_to_their_permissions(stack: Stack) -> None:
    """The same boundaries as under `cropcron up` (tests/test_nats_permissions.py), in the stack:
    an upload tool (user uploader) announces a file and its job runs, and may do nothing else;
    the observer reads run events and publishes nothing; the runner cannot rewrite job
    definitions; a connection without credentials is refused."""
    url = stack.nats_url
    image = stack.tmp / "uploads" / "FROM_TOOL.jpg"
    image.write_bytes(os.urandom(1024))
    image.chmod(0o644)
    stack.dropped.append(image.name)  # (the watcher sees it too: the same id, one run)
    event = event_for("drops", "/uploads", image.name.encode(), image.stat(), source="test-upload-tool")
    await boundaries.announce(url, stack.password("uploader"), event)
    await boundaries.assert_denied(url, "uploader", stack.password("uploader"), boundaries.FORBIDDEN)
    await boundaries.observer_reads_and_cannot_publish(url, stack.password("observer"))
    await boundaries.assert_denied(url, "runner", stack.password("runner"), ("$KV.cropcron_jobs.tick",))
    await boundaries.refused_without_credentials(url)

    async def ran() -> bool:
        return any(r["run_id"] == file_run_id("on_upload", event.id) for r in await stack.runs("on_upload", "succeeded"))

    await wait_for(ran, 60, "the run of the file the upload tool announced")
    # the services themselves were denied nothing
    logs = stack.compose("logs", "--no-color", "nats").stdout
    provoked = ("user:uploader", "user:observer", 'user:runner" - Publish Violation - Subject "$KV.cropcron_jobs')
    denied = [line for line in logs.splitlines() if "Violation" in line and not any(p in line for p in provoked)]
    assert denied == [], denied[:5]


def _instants(rows: list[dict[str, Any]]) -> list[datetime]:
    return sorted(datetime.fromisoformat(r["scheduled_at"]) for r in rows if r.get("scheduled_at"))


def _even_seconds(start: datetime, end: datetime) -> set[datetime]:
    """The tick job's instants in [start, end]."""
    at = start.replace(microsecond=0) + timedelta(seconds=1)
    at += timedelta(seconds=at.second % 2)
    out = set()
    while at <= end:
        out.add(at)
        at += timedelta(seconds=2)
    return out


async def _every_instant_ran(stack: Stack, start: datetime, end: datetime, timeout: float) -> list[dict[str, Any]]:
    """Every even second in [start, end] has a succeeded tick in history; returns those runs."""
    expected = _even_seconds(start, end)
    assert expected, f"no instant of the tick job from {start} to {end}: nothing would be checked"

    async def complete() -> list[dict[str, Any]] | None:
        rows = [r for r in await stack.runs("tick", since=start - timedelta(seconds=60))
                if r.get("scheduled_at") and datetime.fromisoformat(r["scheduled_at"]) in expected]
        done = {datetime.fromisoformat(r["scheduled_at"]) for r in rows if r["state"] == "succeeded"}
        return rows if expected <= done else None

    rows: list[dict[str, Any]] = await wait_for(complete, timeout, f"every instant from {start} to {end} succeeded",
                                                every=1)
    return rows


async def test_scale_runner_to_3_runs_each_instant_once(stack: Stack, request: pytest.FixtureRequest) -> None:
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "120", "--scale", "runner=3", timeout=200)

    async def three() -> list[dict[str, Any]] | None:
        beats = await stack.beats("runner")
        return beats if len(beats) >= 3 else None

    await wait_for(three, 30, "three runner heartbeats")
    start = datetime.now(UTC) + timedelta(seconds=1)
    end = start + timedelta(seconds=16)
    rows = await _every_instant_ran(stack, start, end, 60)
    ids = {r["run_id"] for r in rows}
    executions = [e for e in stack.ledger("ticks.jsonl") if e["run_id"] in ids]
    per_run = {i: sum(1 for e in executions if e["run_id"] == i) for i in ids}
    assert set(per_run.values()) == {1}, f"instants executed other than once: {per_run}"
    runners = {r["runner"] for r in rows}
    _report(request, f"--scale runner=3: {len(ids)} instants, each run once, by {len(runners)} runner(s)")


async def test_nats_restart_and_postgres_outage_lose_no_run(stack: Stack, request: pytest.FixtureRequest) -> None:
    start = datetime.now(UTC) + timedelta(seconds=1)
    began = time.monotonic()
    stack.compose("restart", "nats", timeout=120)
    await stack.close_bus()
    TIMINGS["nats_restart_s"] = time.monotonic() - began
    after_nats = datetime.now(UTC)
    try:
        # (+4 s: a restart can take half a second, and [start, +2 s] then held no even second,
        # which the wait took for "not yet" until it timed out)
        await _every_instant_ran(stack, start, after_nats + timedelta(seconds=4), 90)
    except AssertionError:
        print("compose logs after the NATS restart:\n" + stack.logs())  # for whoever reads a CI failure
        raise

    before = len(stack.ledger("ticks.jsonl"))
    stack.compose("stop", "postgres", timeout=120)
    outage = time.monotonic()

    async def ran_without_postgres() -> bool:
        return len(stack.ledger("ticks.jsonl")) >= before + 3

    await wait_for(ran_without_postgres, 60, "jobs running while Postgres is down", every=1)
    stack.compose("start", "postgres", timeout=120)
    TIMINGS["postgres_outage_s"] = time.monotonic() - outage
    end = datetime.now(UTC)
    rows = await _every_instant_ran(stack, start, end, 120)
    _report(request, f"nats restart {TIMINGS['nats_restart_s']:.1f} s, postgres down "
                     f"{TIMINGS['postgres_outage_s']:.1f} s: {len(rows)} instants, none lost")


async def test_down_then_up_keeps_history_job_state_and_the_watchers_record(stack: Stack,
                                                                            request: pytest.FixtureRequest) -> None:
    if not stack.dropped:
        await _drop_file(stack, "IMG_0001.jpg")
    assert stack.cli("pause", "idle") == {"job": "idle", "paused": True}

    # runs() answers [] while history is busy (a loaded machine, just after the Postgres outage)
    async def before_down() -> tuple[set[str], int] | None:
        ticks = {r["run_id"] for r in await stack.runs("tick", "succeeded")}
        files = len(await stack.runs("on_upload"))
        return (ticks, files) if ticks and files == len(stack.dropped) else None

    kept, file_runs = await wait_for(before_down, 60, "history's ticks and file runs before `down`", every=1)

    stack.compose("down", "--timeout", "10", timeout=300)
    await stack.close_bus()
    began = time.monotonic()
    stack.compose("up", "--detach", "--wait", "--wait-timeout", "180", timeout=300)
    TIMINGS["up_again_s"] = time.monotonic() - began
    _report(request, f"down then up again: healthy in {TIMINGS['up_again_s']:.1f} s")

    async def history_back() -> set[str]:
        return kept & {r["run_id"] for r in await stack.runs("tick", "succeeded")}

    assert await wait_for(history_back, 60, "the runs from before `down`") == kept
    jobs = {j["name"]: j for j in stack.cli("jobs")}
    assert jobs["idle"]["paused"] is True and jobs["tick"]["paused"] is False

    # the new watcher read its record: after its start-up scan it knows the file and announced nothing
    async def scanned() -> dict[str, Any] | None:
        for beat in await stack.beats("watcher"):
            drops = ((beat or {}).get("watches") or {}).get("drops") or {}
            if drops.get("scans", 0) >= 1:
                return drops
        return None

    drops = await wait_for(scanned, 60, "the new watcher's start-up scan")
    assert drops["files_known"] >= 1 and drops["published"] == 0, drops
    assert len(await stack.runs_answered("on_upload")) == file_runs, "a file announced again after down/up"
