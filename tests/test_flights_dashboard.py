"""The Flights page (issue 14) on a running system: a real watcher on two folders of the test's
directory, the dispatcher closing one drone flight per folder, a runner running each batch and
each file, history keeping them, the dashboard showing them.

- north: flight_1 (50 photos, plus a zero-byte file and a symlink, both refused) and flight_2
  (5 photos), closed after a 1 s quiet time, each with its batch run;
- south: flight_A (3 photos) whose job waits an hour: still open, read from KV.

One system for the whole module's story (one test): the API answers, the pages in Chromium
(state, file counts, run links, paging), the refused list on the page and by `cropcron files
refused`, bad parameters named, the files-per-hour chart drawn, a file run's file on its run page
and in `cropcron history`, then the same page in Korean and its screenshots (desktop; the phone
width must not overflow). CROPCRON_UPDATE_SCREENSHOT=1 also refreshes docs/img/flights.png and
docs/img/flight.png."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from browser import TOKEN, Dashboard, chromium, save_screenshot, start_dashboard, watched_page  # noqa: F401  (fixtures)
from conftest import ROOT, System, apply_yaml, wait_for
from watch_helpers import write_file

MS = 1000
NORTH = "북쪽 밭"


def _config(north: Path, south: Path, locale: str) -> str:
    return f"""
system: {{timezone: Asia/Seoul, locale: {locale}}}
folder_watches:
  - {{name: {NORTH}, path: "{north}", extensions: [.jpg]}}
  - {{name: south, path: "{south}", extensions: [.jpg]}}
jobs:
  - name: 정사영상
    type: batch_detection
    on_batch: {{watch: {NORTH}, group_by: folder, quiet: 1s}}
    run: ["{{python}}", "-c", "pass"]
  - name: checksum
    type: image_processing
    on_file: {NORTH}
    run: ["{{python}}", "-c", "pass"]
  - name: south_mosaic
    type: batch_detection
    on_batch: {{watch: south, group_by: folder, quiet: 1h}}
    run: ["{{python}}", "-c", "pass"]
"""


def _cli(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CROPCRON_LOCALE"}
    env.update(NATS_URL=nats_url, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "cropcron", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


async def _clis(nats_url: str, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    return list(await asyncio.gather(*(asyncio.to_thread(_cli, nats_url, *c) for c in commands)))


async def _get(dash: Dashboard, path: str, **params: Any) -> Any:
    async with dash.authed() as c:
        r = await c.get(path, params=params)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        return r.json()


async def test_flights_page_api_refused_cli_and_files_chart(system: System, monkeypatch: pytest.MonkeyPatch,
                                                           chromium: Any, tmp_path: Path) -> None:  # noqa: F811
    north, south = tmp_path / "north", tmp_path / "south"
    for folder in (north / "flight_1", north / "flight_2", south / "flight_A"):
        folder.mkdir(parents=True)
    dash = await start_dashboard(system, monkeypatch, _config(north, south, "en"),
                                 services=("history", "runner", "watcher", "dashboard"))
    try:
        sizes = _upload(north, south)
        one, opened, refused, file_run = await _api(dash, sizes)
        await _cli_commands(dash, refused)
        await _pages(dash, north, south, one, opened, file_run, chromium, tmp_path)
    finally:
        await dash.bus.close()


def _upload(north: Path, south: Path) -> dict[str, int]:
    sizes = {}
    for i in range(50):
        data = os.urandom(1000 + i)
        write_file(north / "flight_1" / f"IMG_{i:04d}.jpg", data)
        sizes[f"flight_1/IMG_{i:04d}.jpg"] = len(data)
    write_file(north / "flight_1" / "empty.jpg", b"")  # refused: zero bytes
    os.symlink("/etc/hostname", north / "flight_1" / "link.jpg")  # refused: a symlink
    for i in range(5):
        write_file(north / "flight_2" / f"IMG_{i:04d}.jpg", os.urandom(2000))
    for i in range(3):
        write_file(south / "flight_A" / f"DJI_{i:04d}.jpg", os.urandom(500))
    return sizes


async def _api(dash: Dashboard, sizes: dict[str, int]) -> tuple[dict[str, Any], ...]:
    # -- the API: two closed flights with their runs, one open flight from KV -----------------
    async def flights_done() -> dict[str, Any] | None:
        data = await _get(dash, "/api/flights", watch=NORTH)
        done = {f["folder"]: f for f in data["flights"] if f["run_state"] == "succeeded"}
        return done if len(done) == 2 else None

    closed = await wait_for(flights_done, 60, "both north flights closed and their batch runs succeeded")
    one = closed["flight_1"]
    assert (one["state"], one["files"], one["bytes"], one["job"]) == ("closed", 50, sum(sizes.values()), "정사영상")
    assert one["first_arrival"] <= one["last_arrival"]

    async def south_open() -> dict[str, Any] | None:
        data = await _get(dash, "/api/flights", watch="south")
        return data["open"][0] if data["open"] and data["open"][0]["files"] == 3 else None

    opened = await wait_for(south_open, 30, "the south flight open in KV with its 3 files")
    assert (opened["state"], opened["folder"], opened["run_state"], opened["bytes"]) == ("open", "flight_A", None, 1500)
    data = await _get(dash, "/api/flights", watch=NORTH, limit=1)
    assert data["open"] == [] and len(data["flights"]) == 1 and data["next_offset"] == 1
    page = await _get(dash, f"/api/flights/{one['id']}", limit=20, offset=40)
    assert page["total_files"] == 50 and page["next_offset"] is None and page["flight"]["id"] == one["id"]
    assert [f["position"] for f in page["files"]] == list(range(40, 50))
    assert all(sizes[f["rel_path"]] == f["size"] for f in page["files"])
    assert (await _get(dash, f"/api/flights/{one['id']}", limit=20))["next_offset"] == 20
    detail = await _get(dash, f"/api/flights/{opened['id']}")
    assert detail["flight"]["state"] == "open" and [f["rel_path"] for f in detail["files"]] == [
        f"flight_A/DJI_{i:04d}.jpg" for i in range(3)]

    async def refused() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = (await _get(dash, "/api/refused", watch=NORTH))["refused"]
        return rows if len(rows) >= 2 else None

    rows = {r["path"]: r["reason"] for r in await wait_for(refused, 30, "the two refused files")}
    assert set(rows) == {"flight_1/empty.jpg", "flight_1/link.jpg"}
    assert "zero bytes" in rows["flight_1/empty.jpg"] and "symbolic link" in rows["flight_1/link.jpg"]

    async def files_counted() -> bool:
        series: dict[str, list[int]] = (await _get(dash, "/api/charts/files", days=1))["series"]
        return sum(series.get(NORTH, [])) == 55

    await wait_for(files_counted, 30, "55 north files counted per hour")
    schema = await _get(dash, "/api/openapi.json")
    assert {"/api/flights", "/api/flights/{flight_id}", "/api/refused", "/api/charts/files"} <= set(schema["paths"])

    async with dash.authed() as c:
        for path, param in (("/api/flights?limit=0", "limit"), ("/api/flights?since=yesterdayish", "since"),
                            (f"/api/flights/{one['id']}?offset=-1", "offset"), ("/api/refused?colour=red", "colour"),
                            ("/api/charts/files?days=1000", "days"), ("/api/refused?limit=x", "limit")):
            r = await c.get(path)
            assert r.status_code == 422 and [p["param"] for p in r.json()["problems"]] == [param], (path, r.text)
            assert param in r.json()["error"]
        r = await c.get("/api/flights/no-such-flight")
        assert r.status_code == 404 and "unknown flight" in r.json()["error"]

    # a file run carries its file
    runs = await _get(dash, "/api/runs", job="checksum", state="succeeded", limit=1)
    file_run = runs["runs"][0]
    assert file_run["file_watch"] == NORTH and sizes[file_run["file_path"]] == file_run["file_size"]
    return one, opened, rows, file_run


async def _cli_commands(dash: Dashboard, rows: dict[str, Any]) -> None:
    # -- the CLI: refused files, bad arguments, a file run's file in `history` -----------------
    listed, as_text, bad_limit, bad_watch, history = await _clis(
        dash.system.nats_url, ["files", "refused", "--watch", NORTH, "--json"], ["files", "refused", "--since", "1h"],
        ["files", "refused", "--limit", "0"], ["files", "refused", "--watch", "nowhere"],
        ["history", "--job", "checksum", "--limit", "3"])
    assert listed.returncode == 0, listed.stderr
    assert {r["path"] for r in json.loads(listed.stdout)} == set(rows)
    assert as_text.returncode == 0 and "flight_1/empty.jpg" in as_text.stdout and "symbolic link" in as_text.stdout
    assert bad_limit.returncode == 2 and bad_limit.stdout == ""
    assert bad_limit.stderr.strip().splitlines() == ["cropcron files refused: argument --limit: must be greater "
                                                     "than 0, got '0'"]
    assert bad_watch.returncode == 2 and "unknown watch 'nowhere'" in bad_watch.stderr and NORTH in bad_watch.stderr
    assert history.returncode == 0 and "FILE" in history.stdout and f"{NORTH}: flight_1/IMG_" in history.stdout


async def _pages(dash: Dashboard, north: Path, south: Path, one: dict[str, Any], opened: dict[str, Any],
                 file_run: dict[str, Any], chromium: Any, tmp_path: Path) -> None:  # noqa: F811
    # -- the pages in Chromium -----------------------------------------------------------------
    shots = tmp_path / "screenshots"
    shots.mkdir()
    context, page, errors = await watched_page(chromium, 20 * MS, viewport={"width": 1280, "height": 800})
    await page.goto(f"{dash.url}/login?next=/flights")
    await page.fill("#token", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{dash.url}/flights")

    row = page.locator(f'#flights tr[data-flight-id="{one["id"]}"]')
    text = await row.inner_text()
    assert "● closed" in text and "50" in text and "✓ succeeded" in text and NORTH in text, text
    assert await row.locator("a.state").get_attribute("href") == f"/runs/{one['id']}"
    south_row = await page.locator(f'#flights tr[data-flight-id="{opened["id"]}"]').inner_text()
    assert "◔ open" in south_row and "3" in south_row and "south_mosaic" in south_row, south_row
    refused_text = await page.inner_text("#refused")
    assert "flight_1/empty.jpg" in refused_text and "symbolic link" in refused_text
    # filter by watch: the open south flight is not a north one
    await page.select_option("select[name=watch]", NORTH)
    await page.click("form.filters button[type=submit]")
    await page.wait_for_url(f"**/flights?watch={quote(NORTH).replace('%20', '+')}**")
    assert await page.locator("#flights tbody tr").count() == 2
    assert await page.locator('#flights tr[data-state="open"]').count() == 0

    # the detail, paged 20 at a time: three pages, the last with 10 files
    await page.goto(f"{dash.url}/flights/{one['id']}?limit=20")
    assert await page.locator("#files tbody tr").count() == 20
    await page.click("a[rel=next]")
    await page.click("a[rel=next]")
    await page.wait_for_selector("text=files 41–50 of 50")
    assert await page.locator("#files tbody tr").count() == 10 and await page.locator("a[rel=next]").count() == 0
    assert (await page.locator("#files tbody tr").first.inner_text()).startswith("41")
    await page.click("#flight-run a")
    await page.wait_for_url(f"{dash.url}/runs/{one['id']}")
    assert "batch" in await page.inner_text("#run")
    await page.goto(f"{dash.url}/runs/{file_run['run_id']}")
    assert file_run["file_path"] in await page.inner_text("#run-file")

    await page.goto(f"{dash.url}/charts")
    await page.wait_for_selector("#files-hourly canvas")
    assert NORTH in await page.inner_text("#files-hourly")  # its legend names the watch
    await page.locator("#files-hourly").screenshot(path=str(shots / "files-chart.png"))

    # -- in Korean: the farm's language, screenshots; a phone does not overflow ----------------
    await apply_yaml(dash.bus, _config(north, south, "ko"))

    async def korean() -> bool:
        await page.goto(f"{dash.url}/flights")
        return bool(await page.get_attribute("html", "lang") == "ko")

    await wait_for(korean, 20, "the dashboard in Korean after the apply", every=0.5)
    text = await page.inner_text("main")
    for words in ("비행", "◔ 수신 중", "● 완료", "✓ 성공", "거부된 파일", "빈 파일", "심볼릭 링크"):
        assert words in text, words
    await page.screenshot(path=str(shots / "flights.png"), full_page=True)
    await page.goto(f"{dash.url}/flights/{one['id']}?limit=12")
    await page.wait_for_selector("#files-range")
    await page.screenshot(path=str(shots / "flight.png"), full_page=True)
    phone = await chromium.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                       storage_state=await context.storage_state())
    mobile = await phone.new_page()
    for path in ("/flights", f"/flights/{one['id']}"):
        await mobile.goto(f"{dash.url}{path}")
        width = await mobile.evaluate("document.documentElement.scrollWidth")
        assert width <= 391, f"{path} is wider than a phone ({width}px)"
        await mobile.screenshot(path=str(shots / f"phone-{path.count('/')}.png"), full_page=True)
    await phone.close()
    await context.close()
    assert not errors, f"errors in the browser console: {errors}"
    if os.environ.get("CROPCRON_UPDATE_SCREENSHOT") == "1":
        for name in ("flights.png", "flight.png"):
            save_screenshot(shots / name, ROOT / "docs" / "img" / name)
    print(f"screenshots in {shots}")
