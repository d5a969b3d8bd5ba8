"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a running
system with the example config (examples/farm.yaml): log in, watch the frequent job's runs arrive
live, "Run now" and see that run appear and finish, pause a job and see it stop being scheduled.
Screenshots of every page go to the test's directory (with CROPCRON_UPDATE_SCREENSHOT=1 the overview
also replaces docs/img/dashboard-overview.png, the README's picture)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from browser import TOKEN, Dashboard, chromium, save_screenshot, start_dashboard, watched_page  # noqa: F401  (fixtures)
from conftest import ROOT, Spawner, System, wait_for

EXAMPLE = (ROOT / "examples" / "farm.yaml").read_text()
FREQUENT = "edge_heartbeat"  # the example's every-5-s job
MS = 1000


@pytest.fixture
async def farm(system: System, monkeypatch: pytest.MonkeyPatch) -> Any:
    # the example's relative job paths resolve against examples/, as with `cropcron up --config`
    monkeypatch.setenv("CROPCRON_DATA_DIR", str(ROOT / "examples"))  # heartbeat.py reports its disk
    dash = await start_dashboard(system, monkeypatch, EXAMPLE, base_dir=ROOT / "examples")
    yield dash
    await dash.bus.close()


async def test_browser_live_run_now_and_pause(farm: Dashboard, chromium: Any, tmp_path: Path) -> None:  # noqa: F811
    shots = tmp_path / "screenshots"
    shots.mkdir()
    context, page, errors = await watched_page(chromium, 30 * MS, viewport={"width": 1280, "height": 900})

    # -- log in: an unauthenticated visit lands on the login page ---------------------
    await page.goto(f"{farm.url}/runs")
    assert "/login" in page.url
    await page.screenshot(path=str(shots / "login.png"))
    await page.fill("#token", "not-the-token-at-all")
    await page.click("button[type=submit]")
    await page.wait_for_selector("text=wrong token")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{farm.url}/runs")
    await page.wait_for_selector("#live.on")  # the event stream is connected
    errors.clear()  # the wrong token's 401 was expected

    # -- the frequent job's runs arrive live, without a reload ------------------------
    await page.evaluate("window.__notReloaded = true")
    before = set(await page.eval_on_selector_all("tbody[data-live] tr", "rows => rows.map(r => r.dataset.runId)"))
    new_row = await page.wait_for_function(
        """([job, before]) => [...document.querySelectorAll('tbody[data-live] tr[data-state="succeeded"]')]
             .find(r => !before.includes(r.dataset.runId) && r.textContent.includes(job))?.dataset.runId""",
        arg=[FREQUENT, list(before)], timeout=40 * MS)
    live_run = await new_row.json_value()
    assert await page.evaluate("window.__notReloaded === true"), "the page reloaded instead of updating live"
    row_text = await page.inner_text(f'tr[data-run-id="{live_run}"]')
    assert "✓ succeeded" in row_text and "tick" in row_text
    await page.screenshot(path=str(shots / "runs.png"), full_page=True)

    # -- Run now: the run appears and finishes ----------------------------------------
    await page.goto(f"{farm.url}/jobs")
    await page.wait_for_selector(f'tr[data-job="{FREQUENT}"]')
    await page.screenshot(path=str(shots / "jobs.png"), full_page=True)
    await page.goto(f"{farm.url}/jobs/{FREQUENT}")
    await page.wait_for_selector("#live.on")
    await page.click('button[data-action="run"]')
    link = await page.wait_for_selector("#queued-run")
    run_id = (await link.inner_text()).strip()
    await page.wait_for_selector(f'tr[data-run-id="{run_id}"]')  # appears live ...
    await page.wait_for_selector(f'tr[data-run-id="{run_id}"][data-state="succeeded"]')  # ... and finishes
    assert "manual" in await page.inner_text(f'tr[data-run-id="{run_id}"]')
    await page.wait_for_selector("#durations canvas")  # the uPlot chart, redrawn as runs finish
    await page.screenshot(path=str(shots / "job.png"), full_page=True)

    # the run page is history's record, which may trail the live event that finished the row by a
    # batch (on a loaded machine over a second); until history has the run its page is a 404, which
    # the browser would log as a console error. So wait on the API (no page load) for the record
    # to say finished, then follow the link.
    async def recorded_finished() -> bool:
        reply = await page.request.get(f"{farm.url}/api/runs/{run_id}")
        return reply.ok and (await reply.json())["state"] == "succeeded"

    await wait_for(recorded_finished, 20, f"history to record run {run_id} finished")
    await page.click("#queued-run")
    await page.wait_for_url(f"{farm.url}/runs/{run_id}")
    facts = await page.inner_text("#run")
    assert "✓ succeeded" in facts and "manual" in facts and "Exit code\n0" in facts.replace("\t", "\n")
    assert "disk free" in await page.inner_text("pre.output")
    await page.screenshot(path=str(shots / "run.png"), full_page=True)

    # -- pause: the job stops being scheduled -----------------------------------------
    await page.goto(f"{farm.url}/jobs/{FREQUENT}")
    await page.click('button[data-action="pause"]')
    await page.wait_for_selector('button[data-action="resume"]')  # the page reloaded with the new state
    paused_at = datetime.now(UTC)
    assert "⏸ paused" in await page.inner_text("dl.facts")
    await page.goto(f"{farm.url}/jobs")
    row = await page.inner_text(f'tr[data-job="{FREQUENT}"]')
    assert "⏸ paused" in row and "Resume" in row
    assert (await page.inner_text(f'tr[data-job="{FREQUENT}"] td.next')).strip() == "—"
    await page.goto(f"{farm.url}/runs?job={FREQUENT}")
    await page.wait_for_selector("#live.on")
    shown = set(await page.eval_on_selector_all("tbody[data-live] tr", "rows => rows.map(r => r.dataset.runId)"))
    # three intervals of the 5 s job: a schedule still firing would have shown runs by now
    await page.wait_for_timeout(16 * MS)
    rows = await page.eval_on_selector_all(
        "tbody[data-live] tr", "rows => rows.map(r => [r.dataset.runId, r.dataset.state])")
    fresh = [(rid, state) for rid, state in rows if rid not in shown and state != "skipped"]
    ticks = [r for r in await farm.runs(job=FREQUENT, since=(paused_at + timedelta(seconds=1)).isoformat())
             if r["trigger_kind"] == "tick" and r["state"] != "skipped"]
    assert not fresh and not ticks, f"the paused job still ran: page {fresh}, history {ticks}"
    await page.screenshot(path=str(shots / "runs-paused.png"), full_page=True)

    async def resumed() -> bool:
        await page.goto(f"{farm.url}/jobs/{FREQUENT}")
        await page.click('button[data-action="resume"]')
        await page.wait_for_selector('button[data-action="pause"]')
        return True

    await wait_for(resumed, 30, "the job to resume")

    # -- the other pages, desktop and phone ------------------------------------------
    # the frequent job's durations (the default, the first job by name, may not have run yet)
    await page.goto(f"{farm.url}/charts?job={FREQUENT}")
    await page.wait_for_selector("#hourly canvas")
    await page.wait_for_selector("#durations canvas")
    await page.screenshot(path=str(shots / "charts.png"), full_page=True)
    await page.goto(f"{farm.url}/")
    await page.wait_for_selector("#health")
    overview = await page.inner_text("main")
    for text in ("✓ NATS", "✓ Postgres", "✓ timer", "✓ runner", "✓ history", "Next runs", "Running now"):
        assert text in overview, text
    assert "alerts" in overview.lower()
    await page.screenshot(path=str(shots / "overview.png"), full_page=True)
    if os.environ.get("CROPCRON_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture on request only
        save_screenshot(shots / "overview.png", ROOT / "docs" / "img" / "dashboard-overview.png")

    phone = await chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                       device_scale_factor=2, storage_state=await context.storage_state())
    mobile = await phone.new_page()
    for name, path in (("overview", "/"), ("jobs", "/jobs"), ("runs", "/runs")):
        await mobile.goto(f"{farm.url}{path}")
        await mobile.wait_for_selector("main h1")
        width = await mobile.evaluate("document.documentElement.scrollWidth")
        assert width <= 390 + 1, f"{path} is wider than the phone ({width}px): it must scroll inside its table"
        await mobile.screenshot(path=str(shots / f"phone-{name}.png"), full_page=True)
    await phone.close()

    for html in (await page.content(),):
        assert TOKEN not in html
    await context.close()
    assert not errors, f"errors in the browser console: {errors}"
    print(f"screenshots in {shots}")


async def test_page_reconnects_after_the_dashboard_is_killed(system: System, spawn: Spawner, chromium: Any,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard as its own process, killed -9 and started again on the same port: the open page
    notices, reconnects by itself (EventSource), keeps its login (the session is stateless) and shows
    new runs again without a reload."""
    from browser import CONFIG
    from conftest import apply_yaml

    from cropcron.embedded import free_port
    from shared.bus import connect

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bus = await connect(system.nats_url, "reconnect-test")
    try:
        await system.start("history")
        await apply_yaml(bus, CONFIG)
        await system.start("runner", "timer")
        settings = {"dashboard_token": TOKEN, "dashboard_port": port, "dashboard_port_fallback": "false"}
        first = spawn.start("dashboard", **settings)
        page = await chromium.new_page()
        page.set_default_timeout(45 * MS)
        await _up(url)
        await page.goto(f"{url}/login")
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        await page.goto(f"{url}/runs?job=pulse")
        await page.wait_for_selector("#live.on")
        await page.evaluate("window.__notReloaded = true")

        first.kill()  # SIGKILL, by the PID this test started
        first.wait(10)
        await page.wait_for_selector("#live.off")  # the page noticed
        spawn.start("dashboard", **settings)
        await page.wait_for_selector("#live.on", timeout=60 * MS)  # ... and reconnected by itself
        seen = set(await page.eval_on_selector_all("tbody[data-live] tr", "rows => rows.map(r => r.dataset.runId)"))
        await page.wait_for_function(
            """before => [...document.querySelectorAll('tbody[data-live] tr')].some(r => !before.includes(r.dataset.runId))""",
            arg=list(seen), timeout=30 * MS)
        assert await page.evaluate("window.__notReloaded === true")
        await page.close()
    finally:
        await bus.close()


async def _up(url: str) -> bool:
    import httpx

    async def answering() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as c:
                return (await c.get(f"{url}/login")).status_code == 200
        except httpx.HTTPError:
            return False

    return bool(await wait_for(answering, 60, f"the dashboard at {url}", every=0.3))
