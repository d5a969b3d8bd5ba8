"""The farm's own words (issue 11): the prototype's config, Korean job names and all, on real
servers (NATS, Postgres, aiosmtpd, Chromium) with `system.locale: ko`.

- `validate` on the prototype's config as it was (no commands) names each job and says what to add,
  in English or Korean; bad names are refused with the job and the reason.
- With commands added (examples/prototype-with-commands.yaml) it runs: `cropcron run` and
  `cropcron history --job "아침 드론 영상 처리"` by the name as written, the dashboard's API by the
  URL-encoded name, its pages in Korean, a failed attempt's alert email in Korean; an `apply` with
  `locale: en` turns the running dashboard English. Also under `cropcron up`.
- The dashboard in Chromium, desktop and phone widths, Korean rendered with a CJK font: screenshots
  in the test's directory (tmp_path/screenshots)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from browser import TOKEN, Dashboard, chromium, start_dashboard, watched_page  # noqa: F401  (fixtures)
from conftest import ROOT, System, apply_yaml, wait_for
from notify_helpers import fast_notify, notifications
from peers_mail import MailServer

from cropcron import cli_alerts
from shared.config import parse_config
from shared.names import subject_key

MORNING = "아침 드론 영상 처리"
BACKUP = "일일 백업"
PROTOTYPE_JOBS = [MORNING, BACKUP, "주간 리포트", "월간 데이터 정리"]
KOREAN_TIME = re.compile(r"^\d{4}년 \d{1,2}월 \d{1,2}일 (오전|오후) \d{1,2}:\d{2}:\d{2}$")
MS = 1000


def cli(args: list[str], cwd: Path, nats_url: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop("CROPCRON_LOCALE", None)
    full.update(env)
    if nats_url:
        full["NATS_URL"] = nats_url
    return subprocess.run([sys.executable, "-m", "cropcron", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120, check=False)


async def acli(args: list[str], cwd: Path, nats_url: str) -> subprocess.CompletedProcess[str]:
    """The CLI beside services running in this test's event loop: wait for it off the loop."""
    return await asyncio.to_thread(cli, args, cwd, nats_url)


def test_prototype_config_without_commands_says_what_to_add(tmp_path: Path) -> None:
    original = ROOT / "examples" / "prototype.yaml"
    out = cli(["validate", str(original)], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out
    assert out.stderr.startswith("invalid config: 4 problem(s)")
    for name in PROTOTYPE_JOBS:
        assert f"job '{name}': definition: give exactly one of run" in out.stderr and "add `run:`" in out.stderr

    # the configured language: system.locale ko (the only change), or CROPCRON_LOCALE
    raw = yaml.safe_load(original.read_text(encoding="utf-8"))
    raw["system"]["locale"] = "ko"
    korean = tmp_path / "prototype-ko.yaml"
    korean.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    for command, env in ((["validate", str(korean)], {}), (["validate", str(original)], {"CROPCRON_LOCALE": "ko"})):
        out = cli(command, tmp_path, **env)
        assert out.returncode == 2 and out.stderr.startswith("잘못된 설정: 문제 4건"), out
        for name in PROTOTYPE_JOBS:
            line = next(x for x in out.stderr.splitlines() if f"작업 '{name}'" in x)
            assert "`run:`" in line and "`call:`" in line and "추가하세요" in line, line

    out = cli(["validate", str(ROOT / "examples" / "prototype-with-commands.yaml")], tmp_path)
    assert out.returncode == 0 and "문제 없음, 작업 4개" in out.stdout, out


def test_bad_names_are_named_with_the_reason(tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", BACKUP)
    jobs = [{"name": n, "type": "database_backup", "run": ["true"]}
            for n in ("", "가" * 65, "야간\t점검", BACKUP, nfd, " 주간")]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"system": {"locale": "ko"}, "jobs": jobs}, allow_unicode=True), encoding="utf-8")
    out = cli(["validate", str(bad)], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out
    for expected in ("작업 '': 필드 'name': 비어 있으면 안 됩니다", "65자입니다. 최대 64자까지",
                     "작업 '야간\\t점검': 필드 'name': 제어 문자를 포함할 수 없습니다 (U+0009 발견)",
                     f"작업 '{BACKUP}': 필드 'name': 이름", "유니코드 정규화만 다릅니다",
                     "작업 ' 주간': 필드 'name': 공백으로 시작하거나 끝날 수 없습니다"):
        assert expected in out.stderr, (expected, out.stderr)


def _prototype_copy(tmp_path: Path) -> tuple[Path, str]:
    """examples/prototype-with-commands.yaml and the job scripts, in a directory of their own (the
    scripts write their data beside the config)."""
    farm = tmp_path / "farm"
    shutil.copytree(ROOT / "examples" / "jobs", farm / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / "examples" / "prototype-with-commands.yaml").read_text(encoding="utf-8")
    (farm / "farm.yaml").write_text(text, encoding="utf-8")
    return farm, text


async def test_prototype_config_runs_in_korean(system: System, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    farm, text = _prototype_copy(tmp_path)
    # the backup's destination is a file, so its first attempt fails: that is the alert to read
    (farm / "data").mkdir()
    (farm / "data" / "backups").write_text("not a directory")
    fast_notify(monkeypatch)
    with MailServer() as mail:
        dash = await start_dashboard(system, monkeypatch, text, base_dir=farm,
                                     services=("history", "runner", "timer", "dashboard", "notifier"))
        try:
            raw = yaml.safe_load(text)
            raw["notifications"] = notifications(mail.port, slack=False,
                                                 rules=[{"when": ["failed", "dead"], "channels": ["mail"]}])
            await cli_alerts.apply_notifications(dash.bus, parse_config(raw))
            await _runs_by_name(dash, farm)
            await _dashboard_in_korean(dash)
            await _alert_email_in_korean(dash, farm, mail)
            await _language_follows_apply(dash, raw, farm)
        finally:
            await dash.bus.close()


async def _runs_by_name(dash: Dashboard, farm: Path) -> None:
    url = dash.system.nats_url
    out = await acli(["run", MORNING, "--wait", "60"], farm, url)
    assert out.returncode == 0, out
    assert re.match(rf"^{MORNING} 실행 \w+: 성공$", out.stdout.strip()), out.stdout
    run_id = out.stdout.split()[-2].rstrip(":")

    async def recorded() -> list[dict[str, Any]]:  # history writes a moment after the run event
        rows: list[dict[str, Any]] = json.loads((await acli(["history", "--job", MORNING, "--json"], farm, url)).stdout)
        return rows if rows and rows[0]["state"] == "succeeded" else []

    rows = await wait_for(recorded, 30, "history to record the run's success")
    assert [r["run_id"] for r in rows] == [run_id] and rows[0]["job"] == MORNING
    # the name as a terminal may send it (decomposed Hangul) finds the same job
    out = await acli(["history", "--job", unicodedata.normalize("NFD", MORNING)], farm, url)
    assert out.returncode == 0 and run_id in out.stdout and "성공" in out.stdout, out
    assert out.stdout.splitlines()[0].split()[:3] == ["실행", "ID", "작업"], out.stdout
    row = next(line for line in out.stdout.splitlines() if run_id in line)
    assert MORNING in row and re.search(r"\d{4}년 \d{1,2}월 \d{1,2}일 (오전|오후)", row), row
    out = await acli(["jobs"], farm, url)
    assert subject_key(MORNING) in out.stdout and "매일 06:00" in out.stdout and "다음 실행" in out.stdout, out
    jobs = json.loads((await acli(["jobs", "--json"], farm, url)).stdout)
    assert {j["name"]: j["key"] for j in jobs}[MORNING] == "_5skyj3fzvaqoxe445oq2aihmtca6za4bedwlfghlu2wa"
    assert {j["name"] for j in jobs} == set(PROTOTYPE_JOBS)
    out = await acli(["pause", "없는 작업"], farm, url)
    assert out.returncode == 2 and "알 수 없는 작업 '없는 작업' (등록된 작업: " in out.stderr, out
    # the run's output landed beside the config, as with `cropcron up --config farm.yaml`
    assert list((farm / "data" / "reports").glob(f"images-morning-{run_id}.json"))


async def _dashboard_in_korean(dash: Dashboard) -> None:
    async with dash.authed() as c:
        r = await c.get(f"/api/jobs/{quote(MORNING)}")  # /api/jobs/%EC%95%84%EC%B9%A8%20...
        assert r.status_code == 200 and r.json()["name"] == MORNING and r.json()["schedule"] == "매일 06:00", r.text
        r = await c.get("/api/runs", params={"job": unicodedata.normalize("NFD", MORNING)})
        assert [row["job"] for row in r.json()["runs"]] == [MORNING], r.text
        page = await c.get(f"/jobs/{quote(MORNING)}")
        assert page.status_code == 200 and '<html lang="ko">' in page.text
        for words in ("지금 실행", "일정", "매일 06:00", "✓ 성공", "최근 실행", MORNING):
            assert words in page.text, words
        r = await c.get(f"/api/jobs/{quote('없는 작업')}")
        assert r.status_code == 404 and "없는 작업" in r.json()["error"]


async def _language_follows_apply(dash: Dashboard, raw: dict[str, Any], farm: Path) -> None:
    """`apply` with another locale: the running dashboard speaks it at the next page, no restart."""
    raw["system"]["locale"] = "en"
    await apply_yaml(dash.bus, yaml.safe_dump(raw, allow_unicode=True), farm)

    async def english() -> bool:
        async with dash.authed() as c:
            page = await c.get(f"/jobs/{quote(MORNING)}")
        return '<html lang="en">' in page.text and "Run now" in page.text and "every day at 06:00" in page.text

    await wait_for(english, 15, "the dashboard in English after applying locale: en")


async def _alert_email_in_korean(dash: Dashboard, farm: Path, mail: MailServer) -> None:
    out = await acli(["run", BACKUP], farm, dash.system.nats_url)
    assert out.returncode == 0, out

    async def arrived() -> Any:
        return mail.handler.delivered()

    received = (await wait_for(arrived, 60, "the failed backup's alert email"))[0]
    subject = received.subject()  # RFC 2047 on the wire
    assert subject.startswith(f"[cropcron 발생] 경고 {BACKUP}: 1번째 시도 실패"), subject
    body = received.text()
    for words in (f"작업: {BACKUP} (database_backup)", "상태: 실패", "시도: 1", "종류: 실패", "시각: ",
                  "http://127.0.0.1:8080/runs/"):
        assert words in body, (words, body)
    at = next(line for line in body.splitlines() if "시각: " in line).split("시각: ")[1]
    assert KOREAN_TIME.match(at), at
    assert "<html lang='ko'>" in received.html() and BACKUP in received.html()


def _require_korean_font() -> None:
    # Chromium draws Hangul with what fontconfig has for Korean; without a CJK font every syllable is
    # an empty box (Debian's fonts-noto-cjk, installed by .ci/run)
    fonts = subprocess.run(["fc-list", ":lang=ko", "family"], capture_output=True, text=True, check=False).stdout
    assert fonts.strip(), "no font for Korean: apt-get install fonts-noto-cjk"


async def test_dashboard_in_korean_in_chromium(system: System, monkeypatch: pytest.MonkeyPatch, chromium: Any,  # noqa: F811
                                               tmp_path: Path) -> None:
    _require_korean_font()
    farm, text = _prototype_copy(tmp_path)
    dash = await start_dashboard(system, monkeypatch, text, base_dir=farm)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        for label, viewport in (("desktop", {"width": 1280, "height": 900}), ("phone", {"width": 390, "height": 844})):
            context, page, errors = await watched_page(chromium, 30 * MS, viewport=viewport,
                                                       is_mobile=label == "phone")
            await page.goto(f"{dash.url}/login")
            assert await page.inner_text("h1") == "로그인"
            await page.fill("#token", TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{dash.url}/")
            await page.wait_for_selector("#live.on")
            assert "실시간" in await page.inner_text("#live")
            await page.screenshot(path=str(shots / f"overview-{label}.png"), full_page=True)

            await page.goto(f"{dash.url}/jobs")
            assert await page.inner_text("h1") == "작업"
            assert MORNING in await page.inner_text("table.jobs")
            await page.screenshot(path=str(shots / f"jobs-{label}.png"), full_page=True)

            await page.click(f"a:text-is('{MORNING}')")  # the link carries the URL-encoded name
            await page.wait_for_selector("#live.on")
            assert await page.evaluate("document.title") == f"{MORNING} · cropcron"
            await page.click('button[data-action="run"]')
            link = await page.wait_for_selector("#queued-run")
            assert f"{MORNING} 실행 요청됨" in await page.inner_text("#notice")
            run_id = (await link.inner_text()).strip()
            row = f'tr[data-run-id="{run_id}"][data-state="succeeded"]'
            await page.wait_for_selector(row)  # added by the live script, in Korean
            assert "✓ 성공" in await page.inner_text(f"{row} td.state")
            assert "수동" in await page.inner_text(row)
            when = await page.inner_text(f'{row} td[data-label="시각"] a')
            assert KOREAN_TIME.match(when), f"the script's time {when!r} does not read as the server's"
            await page.screenshot(path=str(shots / f"job-{label}.png"), full_page=True)

            await page.goto(f"{dash.url}/runs/{run_id}")
            assert (await page.inner_text("h1")).startswith("실행:")
            started = await page.inner_text("dl.facts dd:nth-of-type(5)")
            assert KOREAN_TIME.match(started), started
            await page.screenshot(path=str(shots / f"run-{label}.png"), full_page=True)
            await page.goto(f"{dash.url}/runs?job={quote(MORNING)}")
            await page.wait_for_selector(f'tr[data-run-id="{run_id}"]')
            await page.screenshot(path=str(shots / f"runs-{label}.png"), full_page=True)
            assert not errors, errors
            await context.close()
    finally:
        await dash.bus.close()


def test_prototype_config_under_up(tmp_path: Path, up_data_dir: Path) -> None:
    """The issue's own words: `cropcron up --config` the prototype's config with commands, then
    `cropcron run` and `cropcron history --job "아침 드론 영상 처리"`."""
    farm, _ = _prototype_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "DATABASE_URL", "CROPCRON_LOCALE")}
    env.update(CROPCRON_DATA_DIR=str(up_data_dir), PYTHONPATH=str(ROOT))
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "cropcron", "up", "--config", str(farm / "farm.yaml")], env=env,
                          stdout=log, stderr=subprocess.STDOUT, cwd=farm, start_new_session=True)
    try:
        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "cropcron", *args], env=env, cwd=farm, capture_output=True,
                                  text=True, timeout=90, check=False)

        deadline = time.monotonic() + 60
        while True:  # up is serving once its config is applied
            assert up.poll() is None and time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            jobs = run("jobs", "--json")
            if jobs.returncode == 0 and len(json.loads(jobs.stdout)) == len(PROTOTYPE_JOBS):
                break
            time.sleep(0.5)
        out = run("run", MORNING, "--wait", "60")
        assert out.returncode == 0 and out.stdout.strip().endswith(": 성공"), (out, (tmp_path / "up.log").read_text())
        run_id = out.stdout.split()[-2].rstrip(":")
        rows: list[dict[str, Any]] = []
        while not rows and time.monotonic() < deadline + 30:
            rows = [r for r in json.loads(run("history", "--job", MORNING, "--json").stdout) if r["state"] == "succeeded"]
            time.sleep(0.3)
        assert [r["run_id"] for r in rows] == [run_id]
        out = run("history", "--job", MORNING)
        assert run_id in out.stdout and "성공" in out.stdout and MORNING in out.stdout, out
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()
