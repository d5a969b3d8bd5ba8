"""The dashboard's weight and speed, measured in Debian's headless Chromium against a running system
(embedded nats-server, Postgres, and `cropcron serve history runner timer dashboard` as a separate
process) with a 1 s job running and 7 days of seeded history:

- page weight: bytes each page costs a first visit (HTML, CSS/JS, the chart library, the JSON the
  page fetches at load), as transferred (gzip) and uncompressed; requests per page;
- time to first render: first-contentful-paint of each page, median of --loads cold loads (a
  fresh browser context each, so nothing is cached);
- live latency: from a run event published on NATS to its row appearing in an open /runs page
  (a MutationObserver stamps the row; both clocks are this machine's wall clock), median and p95
  of --events events.

    python bench/dashboard.py                 # ~1 min
    python bench/dashboard.py --loads 20 --events 200

The prototype's "dashboard" printed text to a console, so there is no prototype figure to set
beside these. Figures are printed, never asserted; raw JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from backbone import Postgres
from common import RESULTS_DIR, ROOT, Children, exit_on_signals, log, percentile, print_table, python_env

from cropcron import commands
from cropcron.embedded import free_port, start_nats
from shared import wire
from shared.bus import connect
from shared.config import parse_config
from shared.events import RunEvent, RunState
from shared.topology import ensure_topology

CHROMIUM = os.environ.get("CROPCRON_CHROMIUM", "/usr/bin/chromium")
TOKEN = "bench-" + uuid.uuid4().hex
CONFIG = """
system: {timezone: Asia/Seoul}
jobs:
  - {name: pulse, type: folder_monitoring, interval: 1s, max_retries: 0, catchup: skip, run: ["{python}", "-c", "pass"]}
  - {name: morning_image_processing, type: image_processing, schedule: "0 6 * * *", run: ["{python}", "-c", "pass"]}
  - {name: noon_image_processing, type: image_processing, schedule: "0 12 * * *", run: ["{python}", "-c", "pass"]}
  - {name: nightly_backup, type: database_backup, schedule: "0 2 * * *", run: ["{python}", "-c", "pass"]}
  - {name: weekly_report, type: report_generation, schedule: "0 7 * * 1", run: ["{python}", "-c", "pass"]}
"""
PAGES = ["/login", "/", "/jobs", "/jobs/pulse", "/runs", "/runs/{run_id}", "/charts"]
CHILDREN = Children()


async def seed(js: Any, n: int) -> str:
    """n finished runs of `seeded` over the last 7 days, as the runner would have published them."""
    now = datetime.now(UTC)
    last = ""
    for i in range(n):
        at = now - timedelta(seconds=7 * 86400 * (i + 1) / (n + 1))
        state = RunState.SUCCEEDED if i % 10 else RunState.DEAD
        last = f"seed{i:05d}"
        ev = RunEvent(run_id=last, job="seeded", job_type="image_processing", state=state, attempt=1, at=at,
                      trigger_kind="tick", scheduled_at=at, started_at=at, finished_at=at + timedelta(seconds=3),
                      duration_s=3.0 + (i % 7) * 0.4, exit_code=0 if state == RunState.SUCCEEDED else 1,
                      output_tail="processed 120 images\n" * 5)
        await js.publish(wire.run_event_subject("seeded", state.value), ev.to_bytes(),
                         headers={wire.HEADER_MSG_ID: ev.msg_id()})
    return last


async def page_weights(browser: Any, url: str, state: Any, run_id: str) -> list[dict[str, Any]]:
    rows = []
    for path in PAGES:
        path = path.format(run_id=run_id)
        context = await browser.new_context(storage_state=None if path == "/login" else state)
        page = await context.new_page()
        sizes: list[tuple[str, int, int]] = []

        async def on_response(resp: Any, into: list[tuple[str, int, int]] = sizes) -> None:
            if "/api/events" in resp.url:
                return
            try:
                body = await resp.body()
                headers = await resp.all_headers()
            except Exception:
                return
            sent = await resp.request.sizes()
            into.append((resp.url, len(body), int(sent.get("responseBodySize", len(body))) or len(body)))
            _ = headers

        page.on("response", on_response)
        await page.goto(url + path, wait_until="load")
        await page.wait_for_timeout(1500)  # the JSON a page fetches after load (lists, charts)
        await context.close()
        kinds = {"html": 0, "static": 0, "api": 0}
        for u, raw, _ in sizes:
            kinds["static" if "/static/" in u else "api" if "/api/" in u else "html"] += raw
        rows.append({"page": path if len(path) < 24 else path[:22] + "…", "requests": len(sizes),
                     "raw_kb": sum(r for _, r, _ in sizes) / 1024, "sent_kb": sum(s for _, _, s in sizes) / 1024,
                     **{f"{k}_kb": v / 1024 for k, v in kinds.items()}})
    return rows


BASELINE = "data:text/html,<p>hello</p>"  # the browser's own cost of a cold first paint


async def first_render(browser: Any, url: str, state: Any, run_id: str, loads: int) -> list[dict[str, Any]]:
    rows = []
    for path in [BASELINE, *PAGES]:
        path = path.format(run_id=run_id)
        fcp: list[float] = []
        ttfb: list[float] = []
        for _ in range(loads):
            context = await browser.new_context(storage_state=None if path == "/login" else state)
            page = await context.new_page()
            await page.goto(path if path == BASELINE else url + path, wait_until="load")
            value = await page.evaluate("""() => new Promise(done => {
                const get = () => performance.getEntriesByName('first-contentful-paint')[0];
                const wait = () => get() ? done(get().startTime) : setTimeout(wait, 20);
                wait(); })""")
            fcp.append(float(value))
            # time to the first byte of the page: the server's share (history queries, rendering)
            ttfb.append(float(await page.evaluate(
                "(() => { const n = performance.getEntriesByType('navigation')[0];"
                " return n ? n.responseStart - n.requestStart : 0; })()")))
            await context.close()
        fcp.sort()
        name = "(baseline: 1-line HTML)" if path == BASELINE else path if len(path) < 24 else path[:22] + "…"
        rows.append({"page": name, "fcp_median_ms": statistics.median(fcp),
                     "fcp_p95_ms": percentile(fcp, 95), "ttfb_median_ms": statistics.median(ttfb),
                     "loads": loads})
    return rows


async def live_latency(browser: Any, url: str, state: Any, js: Any, events: int) -> list[float]:
    context = await browser.new_context(storage_state=state)
    page = await context.new_page()
    await page.goto(url + "/runs", wait_until="load")
    await page.wait_for_selector("#live.on")
    await page.evaluate("""() => { window.__seen = {};
        new MutationObserver(muts => { const t = performance.timeOrigin + performance.now();
          for (const m of muts) for (const n of m.addedNodes)
            if (n.dataset && n.dataset.runId && n.dataset.runId.startsWith('live') && !(n.dataset.runId in window.__seen))
              window.__seen[n.dataset.runId] = t; })
          .observe(document.querySelector('tbody[data-live]'), {childList: true}); }""")
    sent: dict[str, float] = {}
    for i in range(events):
        run_id = f"live{uuid.uuid4().hex[:12]}"
        ev = RunEvent(run_id=run_id, job="live_probe", state=RunState.STARTED, attempt=1, at=datetime.now(UTC),
                      trigger_kind="manual", started_at=datetime.now(UTC))
        sent[run_id] = time.time() * 1000
        await js.publish(wire.run_event_subject("live_probe", "started"), ev.to_bytes(),
                         headers={wire.HEADER_MSG_ID: ev.msg_id()})
        await asyncio.sleep(0.1 if i % 10 else 0.5)
    deadline = time.monotonic() + 10
    seen: dict[str, float] = {}
    while time.monotonic() < deadline and len(seen) < len(sent):
        seen = await page.evaluate("window.__seen")
        await asyncio.sleep(0.2)
    await context.close()
    lost = len(sent) - len(seen)
    if lost:
        log(f"{lost} of {len(sent)} events did not show within 10 s")
    return sorted(seen[r] - sent[r] for r in seen if r in sent)


async def main(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    work = Path(tempfile.mkdtemp(prefix="ccbench-dash-"))
    nats = start_nats(work, port=free_port())
    pg = Postgres(os.environ.get("DATABASE_URL"))
    dbname = await pg.create()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        bus = await connect(nats.url, "bench-dashboard")
        await ensure_topology(bus.js)
        await commands.apply(bus, parse_config(yaml.safe_load(CONFIG)), ROOT)
        env = python_env({"NATS_URL": nats.url, "DATABASE_URL": pg.url(dbname), "CROPCRON_DASHBOARD_TOKEN": TOKEN,
                          "CROPCRON_DASHBOARD_PORT": str(port), "CROPCRON_DASHBOARD_PORT_FALLBACK": "false"})
        CHILDREN.spawn([sys.executable, "-m", "cropcron", "serve", "history", "runner", "timer", "dashboard"],
                       env=env, log=RESULTS_DIR / "dashboard-services.log", cwd=ROOT)
        last = await seed(bus.js, args.seed)
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = await c.get(f"/api/runs/{last}")
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the dashboard or history did not come up within 60 s; see "
                                     f"{RESULTS_DIR / 'dashboard-services.log'}")
                await asyncio.sleep(0.3)
        await asyncio.sleep(3)  # a few runs of the 1 s job
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            context = await browser.new_context()
            page = await context.new_page()
            await page.goto(url + "/login")
            await page.fill("#token", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url(url + "/")
            state = await context.storage_state()
            await context.close()
            log("page weight")
            weights = await page_weights(browser, url, state, last)
            log(f"first render ({args.loads} cold loads per page)")
            renders = await first_render(browser, url, state, last, args.loads)
            log(f"live latency ({args.events} events)")
            latencies = await live_latency(browser, url, state, bus.js, args.events)
            await browser.close()
        await bus.close()
    finally:
        CHILDREN.stop_all()
        nats.stop()
        await pg.drop(dbname)
        pg.close()

    print("\nPage weight, first visit (KB; 'sent' as transferred, gzip where the server compresses):")
    print_table(["page", "requests", "sent KB", "raw KB", "html KB", "static KB", "api KB"],
                [[w["page"], w["requests"], f"{w['sent_kb']:.1f}", f"{w['raw_kb']:.1f}", f"{w['html_kb']:.1f}",
                  f"{w['static_kb']:.1f}", f"{w['api_kb']:.1f}"] for w in weights])
    print(f"\nTime to first render (first-contentful-paint, cold, {args.loads} loads per page):")
    print_table(["page", "median ms", "p95 ms", "server (first byte) median ms"],
                [[r["page"], f"{r['fcp_median_ms']:.0f}", f"{r['fcp_p95_ms']:.0f}", f"{r['ttfb_median_ms']:.0f}"]
                 for r in renders])
    if latencies:
        print(f"\nLive latency, run event published -> row in the page ({len(latencies)} of {args.events} events):"
              f" median {statistics.median(latencies):.1f} ms, p95 {percentile(latencies, 95):.1f} ms,"
              f" max {latencies[-1]:.1f} ms")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"dashboard-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"weights": weights, "renders": renders, "latency_ms": latencies}, indent=1))
    log(f"raw results in {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=7, help="cold loads per page for first render")
    parser.add_argument("--events", type=int, default=100, help="run events for the live latency")
    parser.add_argument("--seed", type=int, default=2000, help="finished runs seeded over the last 7 days")
    exit_on_signals()
    asyncio.run(main(parser.parse_args()))
