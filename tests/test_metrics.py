"""The health/metrics endpoint of a service process (`cropcron serve ...`, separate processes):
/metrics counters move with real runs, /healthz follows readiness and the NATS connection (the
test's nats-server killed and restarted on the same port and store), bad requests get a 4xx."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from conftest import FAST_ENV, ROOT, NatsProcess, Spawner, apply_yaml, wait_for, wait_service
from prometheus_client.parser import text_string_to_metric_families

from cropcron.embedded import free_port
from shared.bus import Bus

JOBS = """
jobs:
  - {name: m_tick, type: data_cleanup, interval: 1s, overlap: allow, call: tests.jobs.calls:noop}
"""


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(url)


async def test_metrics_move_with_runs_and_bad_requests_get_4xx(spawn: Spawner, bus: Bus) -> None:
    await apply_yaml(bus, JOBS)
    spawn.start("timer", "runner", "history", instance="m1")
    beat = await wait_service(bus, "runner", "m1")
    url = beat["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    base = url.removesuffix("metrics")
    assert (await get(base + "healthz")).status_code == 200

    async def succeeded() -> float | None:
        value = sample((await get(url)).text, "cropcron_runs_total", job="m_tick", state="succeeded")
        return value if value else None

    before = await wait_for(succeeded, 20, "a succeeded m_tick in cropcron_runs_total")
    after = await wait_for(lambda: _above(succeeded, before), 20, "cropcron_runs_total to move on")
    assert after > before
    text = (await get(url)).text
    assert (sample(text, "cropcron_start_lateness_seconds_count") or 0) > 0
    assert (sample(text, "cropcron_run_duration_seconds_count", job="m_tick") or 0) > 0
    assert sample(text, "cropcron_runs_total", job="m_tick", state="started") is not None
    assert sample(text, "cropcron_nats_connected") == 1
    for service in ("timer", "runner", "history"):
        assert sample(text, "cropcron_service_ready", service=service) == 1, service

    # history's write lag and the consumer gauges (read every CROPCRON_METRICS_INTERVAL = 1 s)
    async def lag_and_consumers() -> str | None:
        text = (await get(url)).text
        ok = ((sample(text, "cropcron_history_write_lag_seconds_count") or 0) > 0
              and sample(text, "cropcron_consumer_pending", stream="CROPCRON_RUNS", consumer="history") is not None
              and sample(text, "cropcron_consumer_redelivered", stream="CROPCRON_TRIGGERS",
                         consumer="runner-normal") is not None)
        return text if ok else None

    text = await wait_for(lag_and_consumers, 10, "write lag and consumer gauges")
    assert (sample(text, "cropcron_history_write_lag_seconds_sum") or 0) >= 0

    async with httpx.AsyncClient(timeout=5) as client:
        post = await client.post(url, content=b"x")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        assert "POST is not allowed on /metrics" in post.json()["error"]
        missing = await client.get(base + "nope")
        assert missing.status_code == 404 and "/healthz" in missing.json()["error"]
        head = await client.head(base + "healthz")
        assert head.status_code == 200 and head.content == b""


async def _above(check: Callable[[], Awaitable[float | None]], floor: float) -> float | None:
    value = await check()
    return value if value is not None and value > floor else None


def _healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CROPCRON_HTTP_PORT": str(port)}
    env.pop("CROPCRON_HTTP_URL_FILE", None)
    return subprocess.run([sys.executable, "-m", "cropcron", "healthcheck"], env=env, capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


async def test_healthz_is_503_until_ready_and_while_nats_is_down(nats_server: NatsProcess, tmp_path: Path) -> None:
    nats_server.stop(signal.SIGKILL)  # the service starts while the broker is down
    port = free_port()
    spawn = Spawner(nats_server.url, None, tmp_path)
    try:
        spawn.start("runner", instance="h1", http_port=port)
        healthz = f"http://127.0.0.1:{port}/healthz"

        async def answer() -> httpx.Response | None:
            try:
                return await get(healthz)
            except httpx.TransportError:
                return None

        first = await wait_for(answer, 20, "the endpoint to listen")
        assert first.status_code == 503
        assert first.json()["nats"] == "connecting" and first.json()["ready"] is False
        check = _healthcheck(port)
        assert check.returncode == 1 and "not ready (HTTP 503): NATS connecting" in check.stderr, check.stderr

        async def status(code: int, nats: str) -> bool:
            r = await answer()
            return r is not None and r.status_code == code and r.json()["nats"] == nats

        nats_server.start()  # same port, same store
        await wait_for(lambda: status(200, "connected"), 20, "200 once connected and the runner fetches")
        assert (await get(healthz)).json()["services"] == {"runner": "ready"}
        check = _healthcheck(port)
        assert check.returncode == 0 and check.stdout.strip() == "ready", check.stderr

        nats_server.stop(signal.SIGKILL)
        await wait_for(lambda: status(503, "disconnected"), 10, "503 while NATS is down")
        metrics = (await get(f"http://127.0.0.1:{port}/metrics")).text
        assert sample(metrics, "cropcron_nats_connected") == 0
        nats_server.start()
        await wait_for(lambda: status(200, "connected"), 20, "200 again after NATS is back")
    finally:
        spawn.stop_all()


def test_serve_refuses_a_taken_port_clearly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {**os.environ, **FAST_ENV, "PYTHONPATH": str(ROOT), "CROPCRON_HTTP_PORT": str(port),
               "NATS_URL": "nats://127.0.0.1:1"}
        out = subprocess.run([sys.executable, "-m", "cropcron", "serve", "timer"], env=env, capture_output=True,
                             text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 1, out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "CROPCRON_HTTP_PORT" in out.stderr
    assert "Traceback" not in out.stderr


def test_healthcheck_with_nothing_listening_says_so() -> None:
    out = _healthcheck(free_port())
    assert out.returncode == 1 and "not reachable" in out.stderr and "Traceback" not in out.stderr
