"""The dashboard's HTTP API and pages over real HTTP (uvicorn on a free port), with real NATS,
Postgres, timer, runner and history behind it: every endpoint, filters and paging, 401 without the
token, 403 for cross-site POSTs and missing CSRF tokens, 404 for unknown jobs and runs, 422 for bad
parameters, and no response ever containing the token."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from browser import CONFIG, TOKEN, VIEWER_TOKEN, Dashboard, dashboard  # noqa: F401  (fixture)
from conftest import System, apply_yaml, wait_for

from shared import wire
from shared.events import Alert

API_GETS = ["/api/overview", "/api/health", "/api/jobs", "/api/jobs/pulse", "/api/runs", "/api/runs/x",
            "/api/charts/hourly", "/api/charts/durations?job=pulse", "/api/alerts", "/api/events",
            "/api/openapi.json", "/api/flights", "/api/flights/x", "/api/refused", "/api/charts/files"]


def no_secret(responses: list[httpx.Response]) -> None:
    for r in responses:
        for secret in (TOKEN, VIEWER_TOKEN):
            assert secret not in r.text, f"{r.request.method} {r.request.url} rendered a token"
            assert secret not in json.dumps(dict(r.headers))


async def login(c: httpx.AsyncClient) -> str:
    """Log in through the form; returns the page's CSRF token."""
    r = await c.post("/login", data={"token": TOKEN, "next": "/jobs"})
    assert r.status_code == 303 and r.headers["location"] == "/jobs"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and TOKEN.lower() not in cookie
    page = await c.get("/jobs")
    assert page.status_code == 200
    match = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def test_access_401_403_and_no_secrets(dashboard: Dashboard) -> None:  # noqa: F811
    seen: list[httpx.Response] = []
    async with dashboard.client() as anon:
        for path in API_GETS:
            r = await anon.get(path)
            seen.append(r)
            assert r.status_code == 401, path
            assert "authentication required" in r.json()["error"]
        r = await anon.get("/api/jobs", headers={"Authorization": "Bearer wrong-token-wrong-token"})
        assert r.status_code == 401
        r = await anon.get("/runs")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        r = await anon.post("/api/jobs/pulse/pause")
        assert r.status_code == 401  # and nothing changed
        seen.append(await anon.get("/login"))
        assert seen[-1].status_code == 200 and "Log in" in seen[-1].text
        r = await anon.post("/login", data={"token": "not-the-token-at-all"})
        assert r.status_code == 401 and "wrong token" in r.text
        seen.append(r)
        # a forged login from another site is refused before the token is even looked at
        r = await anon.post("/login", data={"token": TOKEN}, headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403

    async with dashboard.authed() as c:
        for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                        {"Origin": "http://evil.example"}, {"Origin": "null"}):
            r = await c.post("/api/jobs/pulse/pause", headers=headers)
            seen.append(r)
            assert r.status_code == 403, headers
            assert "cross-site" in r.json()["error"]
            assert "access-control-allow-origin" not in r.headers  # CORS is off
        job = (await c.get("/api/jobs/pulse")).json()
        assert job["paused"] is False, "a refused request changed something"

    async with dashboard.client() as browser:
        csrf = await login(browser)
        r = await browser.post("/api/jobs/pulse/pause")  # the session cookie alone is not enough
        assert r.status_code == 403 and "CSRF" in r.json()["error"]
        r = await browser.post("/api/jobs/pulse/pause", headers={"X-CSRF-Token": "0" * 32})
        assert r.status_code == 403
        r = await browser.post("/api/jobs/pulse/pause", headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
        assert r.status_code == 403
        same = {"X-CSRF-Token": csrf, "Origin": dashboard.url, "Sec-Fetch-Site": "same-origin"}
        r = await browser.post("/api/jobs/pulse/pause", headers=same)
        assert r.status_code == 200 and r.json() == {"job": "pulse", "paused": True}
        r = await browser.post("/api/jobs/pulse/resume", headers=same)
        assert r.status_code == 200 and r.json()["paused"] is False
        for path in ("/", "/jobs", "/runs", "/charts", "/jobs/pulse", "/api/overview", "/api/jobs"):
            r = await browser.get(path)
            seen.append(r)
            assert r.status_code == 200, path
            assert "default-src 'self'" in r.headers["content-security-policy"]
            assert r.headers["x-frame-options"] == "DENY"
        r = await browser.post("/logout", headers=same)
        assert r.status_code == 303

    # the viewer token reads, and is refused every action
    async with dashboard.client(headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}) as viewer:
        assert (await viewer.get("/api/jobs")).status_code == 200
        for action in ("run", "pause", "resume"):
            r = await viewer.post(f"/api/jobs/pulse/{action}")
            seen.append(r)
            assert r.status_code == 403 and "read-only" in r.json()["error"], action
    async with dashboard.client() as viewer:
        r = await viewer.post("/login", data={"token": VIEWER_TOKEN, "next": "/jobs"})
        assert r.status_code == 303
        page = await viewer.get("/jobs")
        seen.append(page)
        assert "view only" in page.text and 'data-action="run"' not in page.text
        csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
        r = await viewer.post("/api/jobs/pulse/run", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        assert (await viewer.post("/logout", headers={"X-CSRF-Token": csrf})).status_code == 303

    # failed logins are limited per address
    async with dashboard.client() as anon:
        codes = [(await anon.post("/login", data={"token": f"guess-{i:020d}"})).status_code for i in range(12)]
        assert codes[-1] == 429 and 401 in codes
    no_secret(seen)


async def test_endpoints_filters_paging_404_422(dashboard: Dashboard, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="cropcron.dashboard")
    async def pulses() -> list[dict[str, Any]]:
        rows = await dashboard.runs(job="pulse", state="succeeded")
        return rows if len(rows) >= 3 else []

    await wait_for(pulses, 60, "three succeeded runs of the 2 s job")
    seen: list[httpx.Response] = []
    async with dashboard.authed() as c:
        # run now, and the run's details
        r = await c.post("/api/jobs/broken/run")
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        assert r.json()["url"] == f"/runs/{run_id}"

        async def dead() -> dict[str, Any] | None:
            got = await c.get(f"/api/runs/{run_id}")
            return got.json() if got.status_code == 200 and got.json()["state"] == "dead" else None

        run = await wait_for(dead, 60, "the manual run of the failing job to end dead")
        assert run["trigger_kind"] == "manual" and run["exit_code"] == 3 and "no disk" in run["output_tail"]
        assert [a["attempt"] for a in run["attempts"]] == [1] and run["attempts"][0]["exit_code"] == 3
        # the run's page: its facts, and its hostile output as text, never as markup
        page = await c.get(f"/runs/{run_id}")
        assert page.status_code == 200 and "✖ dead" in page.text and "exited with code 3" in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>alert" not in page.text
        assert "<img src=x" not in page.text
        # the action is in the audit log, with who asked
        assert any(f"manual run {run_id} of broken requested by dashboard (operator, bearer, 127.0.0.1)" in r.message
                   for r in caplog.records), [r.message for r in caplog.records if "audit" in r.message]

        # filters
        r = await c.get("/api/runs", params={"job": "pulse", "state": "succeeded"})
        rows = r.json()["runs"]
        assert rows and all(x["job"] == "pulse" and x["state"] == "succeeded" for x in rows)
        assert all(x["job"] == "broken" for x in (await c.get("/api/runs?job=broken")).json()["runs"])
        assert [x["run_id"] for x in (await c.get("/api/runs?state=dead")).json()["runs"]] == [run_id]
        assert (await c.get("/api/runs", params={"since": "1h"})).json()["runs"]
        past = (datetime.now(UTC) - timedelta(days=30)).isoformat()
        assert (await c.get("/api/runs", params={"until": past})).json()["runs"] == []
        assert (await c.get("/api/runs", params={"since": "2020-01-01T00:00", "job": "pulse"})).json()["runs"]
        # paging: two disjoint pages, newest first
        p1 = (await c.get("/api/runs?job=pulse&limit=2&offset=0")).json()
        p2 = (await c.get("/api/runs?job=pulse&limit=2&offset=2")).json()
        assert len(p1["runs"]) == 2 and p1["next_offset"] == 2 and p2["offset"] == 2
        assert not {x["run_id"] for x in p1["runs"]} & {x["run_id"] for x in p2["runs"]}
        assert (await c.get("/api/runs?job=pulse&limit=1000&offset=100000")).json() == {
            "runs": [], "limit": 1000, "offset": 100000, "next_offset": None}
        page = await c.get("/runs", params={"job": "pulse", "state": "succeeded", "limit": 1, "offset": 1})
        assert page.status_code == 200 and page.text.count('<tr data-run-id="') == 1
        assert 'href="?job=pulse&amp;state=succeeded&amp;limit=1&amp;offset=2">older' in page.text
        assert 'href="?job=pulse&amp;state=succeeded&amp;limit=1&amp;offset=0">← newer' in page.text

        # jobs
        jobs = {j["name"]: j for j in (await c.get("/api/jobs")).json()["jobs"]}
        assert set(jobs) == {"pulse", "process_images", "broken"}
        assert jobs["pulse"]["schedule"] == "every 2s" and jobs["pulse"]["next_run"]
        assert jobs["process_images"]["schedule"] == "every day at 06:00"
        assert jobs["process_images"]["timezone"] == "Asia/Seoul" and jobs["process_images"]["next_run"].endswith("+09:00")
        assert jobs["broken"]["schedule"] == "on demand" and jobs["broken"]["next_run"] is None
        assert jobs["pulse"]["last_state"] in ("started", "succeeded") and jobs["pulse"]["success_rate"] == 1.0
        assert jobs["pulse"]["mean_duration_s"] > 0 and jobs["pulse"]["p95_duration_s"] >= jobs["pulse"]["mean_duration_s"]
        assert jobs["broken"]["success_rate"] == 0.0 and jobs["broken"]["last_state"] == "dead"
        one = (await c.get("/api/jobs/pulse")).json()
        assert one["name"] == "pulse" and one["type"] == "folder_monitoring"

        # pause stops the schedule: no next run; resume brings it back
        assert (await c.post("/api/jobs/pulse/pause")).json()["paused"] is True
        paused = (await c.get("/api/jobs/pulse")).json()
        assert paused["paused"] is True and paused["next_run"] is None
        assert (await c.post("/api/jobs/pulse/resume")).json()["paused"] is False
        assert (await c.get("/api/jobs/pulse")).json()["next_run"]

        # overview, health, charts, alerts
        o = (await c.get("/api/overview")).json()
        assert o["health"]["nats"]["ok"] and o["health"]["postgres"]["ok"] is True
        services = {s["service"]: s for s in o["health"]["services"]}
        assert all(services[n]["ok"] for n in ("timer", "runner", "history", "dashboard")), services
        assert o["today"].get("succeeded", 0) >= 3 and o["today"].get("dead") == 1
        assert 0 < o["success_rate_7d"] < 1 and o["timezone"] == "Asia/Seoul"
        assert "pulse" in [n["job"] for n in o["next_runs"]]
        assert set(o["alerts"]) == {"available", "alerts", "error"}
        assert (await c.get("/api/health")).json()["nats"]["ok"]
        hourly = (await c.get("/api/charts/hourly")).json()
        assert len(hourly["hours"]) in (168, 169) and sum(hourly["series"]["succeeded"]) >= 3
        assert sum(hourly["series"]["dead"]) == 1
        assert len((await c.get("/api/charts/hourly?days=1")).json()["hours"]) in (24, 25)
        durations = (await c.get("/api/charts/durations?job=pulse")).json()
        assert durations["job"] == "pulse" and all(x["duration_s"] > 0 for x in durations["runs"])
        ats = [x["at"] for x in durations["runs"]]
        assert ats == sorted(ats) and len(ats) >= 3
        # an alert raised on the bus (the notifier's contract) shows on the overview, linked to its run
        alert = Alert(id=f"{run_id}.dead", level="error", kind="dead", summary="broken is dead <b>x</b>",
                      job="broken", run_id=run_id, source="test", at=datetime.now(UTC))
        await dashboard.bus.js.publish(wire.alert_subject("error", "dead"), alert.to_bytes(),
                                       headers={wire.HEADER_MSG_ID: alert.id})

        async def listed() -> dict[str, Any] | None:
            got = (await c.get("/api/alerts?limit=5")).json()
            return got if got["available"] and any(a["id"] == alert.id for a in got["alerts"]) else None

        alerts = await wait_for(listed, 30, "the raised alert in /api/alerts")
        assert alerts["error"] is None
        page = (await c.get("/")).text
        assert f'<a href="/runs/{run_id}">broken is dead &lt;b&gt;x&lt;/b&gt;</a>' in page

        # the OpenAPI description lists every endpoint
        spec = (await c.get("/api/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        for path in ("/api/overview", "/api/health", "/api/jobs", "/api/jobs/{name}", "/api/jobs/{name}/run",
                     "/api/jobs/{name}/pause", "/api/jobs/{name}/resume", "/api/runs", "/api/runs/{run_id}",
                     "/api/charts/hourly", "/api/charts/durations", "/api/alerts", "/api/events"):
            assert path in spec["paths"], path
        assert "post" in spec["paths"]["/api/jobs/{name}/run"]

        # 404s: JSON for the API, a readable page for people
        for method, path in (("GET", "/api/jobs/nope"), ("GET", "/api/runs/nope"), ("POST", "/api/jobs/nope/run"),
                             ("POST", "/api/jobs/nope/pause"), ("POST", "/api/jobs/nope/resume"),
                             ("GET", "/api/charts/durations?job=nope"), ("GET", "/api/nothing-here")):
            r = await c.request(method, path)
            seen.append(r)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("application/json") and r.json()["error"]
        for path in ("/runs/nope", "/jobs/nope"):
            r = await c.get(path)
            assert r.status_code == 404 and "text/html" in r.headers["content-type"] and "not found" in r.text
        r = await c.get("/api/runs/" + "x" * 300)
        assert r.status_code == 404

        # 422s name the parameter
        for path, param in (("/api/runs?limit=0", "limit"), ("/api/runs?limit=abc", "limit"),
                            ("/api/runs?state=exploded", "state"), ("/api/runs?since=yesterdayish", "since"),
                            ("/api/runs?until=2026-13-45", "until"), ("/api/runs?offset=-1", "offset"),
                            ("/api/runs?colour=red", "colour"), ("/api/charts/hourly?days=1000", "days"),
                            ("/api/charts/durations", "job"), ("/api/alerts?limit=x", "limit"),
                            ("/api/jobs?x=1", "x")):
            r = await c.get(path)
            seen.append(r)
            assert r.status_code == 422, path
            body = r.json()
            assert body["status"] == 422 and param in [p["param"] for p in body["problems"]], (path, body)
        r = await c.get("/runs?limit=abc")
        assert r.status_code == 422 and "text/html" in r.headers["content-type"] and "limit" in r.text

        # the event stream: a hello, then the 2 s job's events as they happen
        async with c.stream("GET", "/api/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            kinds: list[str] = []
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                if line.startswith("data: ") and kinds[-1] == "run":
                    event = json.loads(line[6:])
                    assert event["job"] == "pulse" and "output_tail" not in event
                    break
            assert kinds[0] == "hello" and kinds[-1] == "run"
    no_secret(seen)


async def test_without_history_pages_still_answer(system: System, monkeypatch: pytest.MonkeyPatch) -> None:
    """History not running: the API says 503 naming the query, the pages still render what KV and
    the heartbeats know (jobs, next runs, health) with a notice, and alerts read "unavailable"."""
    from cropcron.embedded import free_port
    from shared.bus import connect

    port = free_port()
    monkeypatch.setenv("CROPCRON_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("CROPCRON_DASHBOARD_PORT", str(port))
    monkeypatch.setenv("CROPCRON_DASHBOARD_REQUEST_TIMEOUT", "1")
    bus = await connect(system.nats_url, "no-history-test")
    try:
        await apply_yaml(bus, CONFIG)
        await system.start("dashboard")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            r = await c.get("/api/runs")
            assert r.status_code == 503 and "cropcron.history.runs" in r.json()["error"]
            r = await c.get("/runs")
            assert r.status_code == 503 and "text/html" in r.headers["content-type"]
            o = (await c.get("/api/overview")).json()
            assert o["errors"] and o["today"] == {} and o["success_rate_7d"] is None
            assert o["health"]["postgres"]["ok"] is None
            assert {s["service"]: s["ok"] for s in o["health"]["services"]}["history"] is False
            assert o["alerts"]["available"] is False and "pulse" in [n["job"] for n in o["next_runs"]]
            page = await c.get("/")
            assert page.status_code == 200 and "alerts unavailable" in page.text and "✗ history" in page.text
            jobs = (await c.get("/api/jobs")).json()["jobs"]
            assert {j["name"] for j in jobs} == {"pulse", "process_images", "broken"}
            assert all(j["history_available"] is False and j["last_state"] is None for j in jobs)
            page = await c.get("/jobs")
            assert page.status_code == 200 and "history is not answering" in page.text
    finally:
        await bus.close()
