"""Fixtures for the dashboard tests: a running system (real NATS, Postgres, timer, runner, history)
with the dashboard on a free loopback port, and Debian's headless Chromium driven by Playwright.

Import the fixtures into a test module: `from browser import dashboard, chromium  # noqa: F401`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import System, apply_yaml, wait_for

from cropcron.embedded import free_port
from shared import wire
from shared.bus import Bus, connect
from shared.kv_read import bucket_entries

TOKEN = "test-dashboard-token-5f1c2a9e"  # test secrets: no response may ever contain them
VIEWER_TOKEN = "test-viewer-token-8d0b7c31"
CHROMIUM = os.environ.get("CROPCRON_CHROMIUM", "/usr/bin/chromium")

CONFIG = """
system:
  timezone: Asia/Seoul
jobs:
  - name: pulse
    type: folder_monitoring
    interval: 2s
    max_retries: 0
    catchup: skip
    run: ["{python}", "-c", "print('pulse ok')"]
  - name: process_images
    type: image_processing
    schedule: "0 6 * * *"
    max_retries: 0
    run: ["{python}", "-c", "import time; time.sleep(0.3); print('processed 12 images')"]
  - name: broken
    type: report_generation
    max_retries: 0
    # its output is hostile HTML: pages must show it as text
    run: ["{python}", "-c", "import sys; print('<script>alert(1)</script><img src=x onerror=alert(2)> no disk'); sys.exit(3)"]
"""


@dataclass
class Dashboard:
    url: str  # http://127.0.0.1:PORT
    token: str
    bus: Bus
    system: System

    def client(self, **kw: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30, **kw)

    def authed(self) -> httpx.AsyncClient:
        return self.client(headers={"Authorization": f"Bearer {self.token}"})

    async def runs(self, **params: Any) -> list[dict[str, Any]]:
        async with self.authed() as c:
            r = await c.get("/api/runs", params=params)
            r.raise_for_status()
            rows: list[dict[str, Any]] = r.json()["runs"]
            return rows


async def start_dashboard(system: System, monkeypatch: pytest.MonkeyPatch, config: str = CONFIG,
                          base_dir: Path | None = None,
                          services: tuple[str, ...] = ("history", "runner", "timer", "dashboard")) -> Dashboard:
    port = free_port()
    monkeypatch.setenv("CROPCRON_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("CROPCRON_DASHBOARD_VIEWER_TOKEN", VIEWER_TOKEN)
    monkeypatch.setenv("CROPCRON_DASHBOARD_PORT", str(port))
    monkeypatch.setenv("CROPCRON_DASHBOARD_SSE_KEEPALIVE", "2")
    bus = await connect(system.nats_url, "dashboard-test")
    await system.start("history")  # creates the topology and migrates before the config lands
    await apply_yaml(bus, config, base_dir)
    await system.start(*[s for s in services if s != "history"])
    dash = Dashboard(url=f"http://127.0.0.1:{port}", token=TOKEN, bus=bus, system=system)

    async def beating() -> bool:
        for raw in (await bucket_entries(bus.js, wire.KV_SERVICES, "dashboard.")).values():
            return bool(json.loads(raw).get("url"))
        return False

    await wait_for(beating, 30, "the dashboard's heartbeat with its URL")
    return dash


@pytest.fixture
async def dashboard(system: System, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Dashboard]:
    dash = await start_dashboard(system, monkeypatch)
    yield dash
    await dash.bus.close()


def _require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run installs it)")


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    _require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        await browser.close()


async def watched_page(browser: Any, timeout_ms: float, **context: Any) -> tuple[Any, Any, list[str]]:
    """A new context and page whose script errors (uncaught, or console.error) land in the list
    returned, for a test to assert empty at the end."""
    ctx = await browser.new_context(**context)
    page = await ctx.new_page()
    page.set_default_timeout(timeout_ms)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return ctx, page, errors


def save_screenshot(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
