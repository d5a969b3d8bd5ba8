"""Built-in chores as runs, on real servers (nats-server, Postgres, aiosmtpd, a local Slack webhook;
services in-process): `cleanup_files` frees a small tmpfs to its threshold, oldest first, and
touches nothing outside its folder; a folder turned into a symbolic link after `apply` is refused
at run time; `backup_history` writes restorable dumps and keeps N; `digest` arrives by email with
its chart and the right counts, and on Slack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import System, apply_yaml, create_database, drop_database, fetch, wait_for
from notify_helpers import apply_all, fast_notify, notifications, publish_events, raise_alert, run_event
from peers_mail import MailServer
from peers_slack import SlackServer

from cropcron import commands
from services.notifier.chart import read_png_size
from shared import wire
from shared.bus import Bus
from shared.events import Alert, RunState, utcnow
from shared.pg_tools import find_tool

MiB = 2**20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: its free space is exactly what the test puts there."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True,
                         text=True, check=False)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _file(path: Path, age_h: float, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    when = time.time() - age_h * 3600
    os.utime(path, (when, when))
    return path


async def _run(bus: Bus, job: str, wait: float = 30) -> dict[str, Any]:
    run = await commands.run_now(bus, job, wait=wait)
    assert run["state"] in ("succeeded", "dead"), run
    return run


async def _result(db: str, run_id: str) -> dict[str, Any]:
    async def row() -> Any:
        rows = await fetch(db, "SELECT state, result, error, output_tail FROM runs WHERE run_id = $1 AND state IN "
                               "('succeeded', 'dead')", run_id)
        return rows[0] if rows else None

    found = await wait_for(row, 20, f"run {run_id} finished in history")
    return dict(found)


async def test_cleanup_frees_to_the_threshold_oldest_first_and_nothing_outside(
        system: System, bus: Bus, small_disk: Path, db_url: str) -> None:
    root = small_disk / "area"
    folder = root / "flights"
    # 7.25 MiB used of 8: six old 1 MiB images (the oldest in a subfolder), a fresh one, a canary in
    # the root beside the folder, and a precious file outside the root reached by two links
    old = {f"f{i}.tif": _file(folder / f"f{i}.tif", 30 - i, MiB) for i in range(5)}
    old["sub/f5.tif"] = _file(folder / "sub" / "f5.tif", 40, MiB)
    fresh = _file(folder / "fresh.tif", 0, MiB // 2)
    canary = _file(root / "canary.tif", 100, MiB // 2)
    precious = _file(small_disk / "outside" / "precious.tif", 100, MiB // 4)
    (folder / "escape").symlink_to(small_disk / "outside")
    (folder / "link.tif").symlink_to(precious)
    config = f"""
system: {{cleanup_roots: ["{root}"]}}
jobs:
  - {{name: tidy_dry, type: data_cleanup, max_retries: 0,
      builtin: {{chore: cleanup_files, folder: "{folder}", min_free: 3MiB, dry_run: true}}}}
  - {{name: tidy, type: data_cleanup, max_retries: 0, builtin: {{chore: cleanup_files, folder: "{folder}",
      min_free: 3MiB}}}}
"""
    await apply_yaml(bus, config)
    await system.start("history", "runner")
    st = os.statvfs(small_disk)
    assert st.f_bavail * st.f_frsize < 1 * MiB

    dry = await _result(db_url, (await _run(bus, "tidy_dry"))["run_id"])
    assert dry["state"] == "succeeded" and dry["result"]["dry_run"] is True
    assert dry["result"]["deleted"] == ["sub/f5.tif", "f0.tif", "f1.tif"] and dry["result"]["target_met"] is True
    assert all(p.exists() for p in old.values())  # a dry run deletes nothing

    done = await _result(db_url, (await _run(bus, "tidy"))["run_id"])
    result = done["result"]
    assert done["state"] == "succeeded", done
    assert result["deleted"] == ["sub/f5.tif", "f0.tif", "f1.tif"] and result["deleted_count"] == 3
    assert result["free_after"] >= 3 * MiB and result["target_met"] is True
    st = os.statvfs(small_disk)
    assert st.f_bavail * st.f_frsize >= 3 * MiB  # the file system says so too
    assert sorted(k for k, p in old.items() if p.exists()) == ["f2.tif", "f3.tif", "f4.tif"]
    assert fresh.exists() and canary.exists() and precious.exists()
    assert (folder / "escape").is_symlink() and (folder / "link.tif").is_symlink()
    assert "deleted 3 file(s)" in (done["output_tail"] or "")


async def test_cleanup_refused_at_run_time_when_the_folder_became_a_link(
        system: System, bus: Bus, tmp_path: Path, db_url: str) -> None:
    root = tmp_path / "area"
    folder = root / "flights"
    folder.mkdir(parents=True)
    canary = _file(tmp_path / "elsewhere" / "canary.tif", 100, 10)
    await apply_yaml(bus, f"""
system: {{cleanup_roots: ["{root}"]}}
jobs:
  - {{name: tidy, type: data_cleanup, max_retries: 0,
      builtin: {{chore: cleanup_files, folder: "{folder}", older_than: 1h}}}}
""")
    # after `apply` accepted it, the folder is swapped for a link out of the root
    folder.rmdir()
    folder.symlink_to(tmp_path / "elsewhere")
    await system.start("history", "runner")
    run = await _run(bus, "tidy")
    row = await _result(db_url, run["run_id"])
    assert row["state"] == "dead" and "refused" in row["error"] and "symbolic link" in row["error"], row
    assert canary.exists()


async def test_apply_refuses_a_symlink_escape(bus: Bus, tmp_path: Path) -> None:
    root = tmp_path / "area"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    with pytest.raises(Exception, match="resolves through a symbolic link to /etc"):
        await apply_yaml(bus, f"""
system: {{cleanup_roots: ["{root}"]}}
jobs:
  - {{name: tidy, type: data_cleanup, builtin: {{chore: cleanup_files, folder: "{root}/escape", older_than: 1d}}}}
""")


@contextlib.asynccontextmanager
async def _database(admin: str) -> AsyncIterator[str]:
    url = await create_database(admin, "cc_restore")
    try:
        yield url
    finally:
        await drop_database(admin, url)


async def test_backup_history_restorable_and_keeps_n(system: System, bus: Bus, tmp_path: Path, db_url: str,
                                                     pg_admin_url: str) -> None:
    backups = tmp_path / "backups"
    await apply_yaml(bus, f"""
jobs:
  - {{name: backup, type: database_backup, max_retries: 0,
      builtin: {{chore: backup_history, folder: "{backups}", keep: 2}}}}
""")
    await system.start("history", "runner")
    runs = []
    for _ in range(3):
        run = await _run(bus, "backup", 60)
        row = await _result(db_url, run["run_id"])
        assert row["state"] == "succeeded", row
        runs.append((run["run_id"], row["result"]))
    names = sorted(p.name for p in backups.iterdir())
    assert len(names) == 2 and names == sorted(runs[-1][1]["kept"]), names
    assert runs[-1][1]["removed"] and not list(backups.glob("*.partial"))
    newest = Path(runs[-1][1]["file"])
    assert newest.name in names and oct(os.stat(newest).st_mode & 0o777) == "0o600"
    # restore it into an empty database: the first two backup runs are in it, succeeded
    conn = await asyncpg.connect(db_url)
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()
    pg_restore = find_tool("pg_restore", major)
    async with _database(pg_admin_url) as target:
        from services.runner.chores.backup import split_password

        dsn, password = split_password(target)
        env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
        out = await asyncio.to_thread(subprocess.run, [str(pg_restore), "--no-owner", f"--dbname={dsn}",
                                                       str(newest)], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        rows = await fetch(target, "SELECT run_id, state FROM runs WHERE job = 'backup'")
        restored = {r["run_id"]: r["state"] for r in rows}
        assert restored.get(runs[0][0]) == "succeeded" and restored.get(runs[1][0]) == "succeeded", restored


DIGEST_JOBS = """
system: {{timezone: Asia/Seoul}}
jobs:
  - {{name: nightly_ok, type: database_backup, run: ["{{python}}", "-c", "pass"]}}
  - {{name: ndvi, type: image_processing, max_retries: 0,
      run: ["{{python}}", "-c", "import sys; print('tile 17 corrupt'); sys.exit(3)"]}}
  - {{name: checksum, type: image_processing, on_file: incoming, run: ["true"]}}
  - {{name: flight_index, type: batch_detection, on_batch: {{watch: incoming}}, run: ["true"]}}
  - {{name: daily_digest, type: report_generation, max_retries: 1, retry_delay: 0.5s,
      builtin: {{chore: digest, channels: [mail, slack], period: 1d, disks: ["{disk}"], title: Farm day}}}}
folder_watches:
  - {{name: incoming, path: "{disk}"}}
"""


async def test_digest_by_email_with_chart_and_on_slack(system: System, bus: Bus, tmp_path: Path, db_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fast_notify(monkeypatch)
    with MailServer() as mail, SlackServer() as slack:
        monkeypatch.setenv("TEST_SLACK_WEBHOOK", slack.url)
        # alerts go to the log only: the mailbox receives the digest and nothing else
        notify = notifications(mail.port, rules=[{"name": "all", "channels": ["log"]}])
        await apply_all(bus, DIGEST_JOBS.format(disk=tmp_path), notify)
        await system.start("history", "runner", "notifier")
        for _ in range(2):
            await _run(bus, "nightly_ok")
        dead = await _run(bus, "ndvi")
        assert dead["state"] == "dead"
        # three files and one flight received (as the dispatcher's runs would record them)
        await publish_events(bus, [run_event("checksum", f"file-{i}", RunState.SUCCEEDED, trigger_kind="file",
                                             started_at=utcnow()) for i in range(3)]
                             + [run_event("flight_index", "batch-1", RunState.SUCCEEDED, trigger_kind="batch",
                                          started_at=utcnow())])
        await raise_alert(bus, Alert(id="overdue.weekly.1", level="error", kind="overdue", job="weekly_report",
                                     summary="weekly_report: no successful run", source="notifier", at=utcnow()))
        await wait_for(lambda: _count(db_url, "SELECT count(*) FROM runs WHERE job IN ('checksum', 'flight_index')"
                                              " AND state = 'succeeded'", 4), 20, "file runs in history")
        await wait_for(lambda: _count(db_url, "SELECT count(*) FROM alerts WHERE kind = 'overdue'", 1), 20,
                       "the overdue alert in history")

        run = await _run(bus, "daily_digest")
        assert run["state"] == "succeeded", run
        await wait_for(lambda: _now(mail.handler.delivered() and slack.ok()), 30, "the digest by email and Slack")
        msg = mail.handler.delivered()[0].message
        assert msg["Subject"] == "[cropcron DIGEST] Farm day: 7 runs, 1 dead", msg["Subject"]
        text = mail.handler.delivered()[0].text()
        for expected in ("nightly_ok: succeeded 2", "ndvi: dead 1", "checksum: succeeded 3",
                         f"http://127.0.0.1:8080/runs/{dead['run_id']}", "exited with code 3",
                         "incoming: 3 file(s), 1 flight(s)", f"{tmp_path}: ", "weekly_report: overdue since"):
            assert expected in text, (expected, text)
        html = mail.handler.delivered()[0].html()
        assert "src='cid:digest-chart'" in html
        images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
        assert len(images) == 1 and images[0]["Content-ID"] == "<digest-chart>"
        assert read_png_size(images[0].get_payload(decode=True)) == (560, 160)
        assert msg.get_content_type() == "multipart/alternative"
        blocks = json.dumps(slack.ok()[0].body["blocks"], ensure_ascii=False)
        assert "Farm day: 7 runs, 1 dead" in blocks and f"/runs/{dead['run_id']}|Open the run" in blocks
        row = await _result(db_url, run["run_id"])
        assert row["result"]["runs"] == 7 and row["result"]["dead"] == 1
        assert row["result"]["notifications"] == [f"mail.digest.{run['run_id']}", f"slack.digest.{run['run_id']}"]
        await asyncio.sleep(1)
        assert len(mail.handler.received) == 1 and len(slack.ok()) == 1  # once each


async def _count(db: str, sql: str, at_least: int) -> bool:
    rows = await fetch(db, sql)
    return bool(rows) and rows[0][0] >= at_least


async def _now(value: object) -> object:
    return value


async def test_a_chore_times_out_and_is_retried_like_any_job(system: System, bus: Bus) -> None:
    # a history that never answers: the digest's query waits, and the job's timeout ends each attempt
    asked: list[float] = []

    async def stall(msg: Any) -> None:
        asked.append(time.monotonic())

    await bus.nc.subscribe(wire.HISTORY_REPORT_DIGEST, cb=stall)
    await apply_yaml(bus, """
jobs:
  - {name: digest, type: report_generation, timeout: 1s, max_retries: 1, retry_delay: 0.2s, retry_jitter: 0,
     builtin: {chore: digest, channels: [log]}}
notifications:
  channels: {log: {type: log}}
""")
    await system.start("runner")
    started = time.monotonic()
    run = await commands.run_now(bus, "digest", wait=30)
    assert run["state"] == "dead" and run["error"] == "timed out after 1s; chore digest stopped", run
    assert len(asked) == 2 and time.monotonic() - started >= 2  # two attempts of a second each
