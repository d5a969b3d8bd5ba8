"""Built-in chores without servers: their config and its refusals (/, outside the cleanup roots, a
symbolic link that escapes them), the cleanup's rules on a temp dir, the digest's rendering and
its hand-written PNG."""

from __future__ import annotations

import os
import struct
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from services.notifier import digest as render_digest
from services.notifier.chart import read_png_size
from services.notifier.render import Look
from services.runner.chores.backup import split_password
from services.runner.chores.cleanup import CleanupRefused, cleanup
from shared.chores import CleanupFiles, free_target, parse_free
from shared.config import ConfigError, load_config, parse_config, resolve_system, to_specs
from shared.digest import DigestReport
from shared.events import Notification


def _config(tmp_path: Path, jobs: list[dict[str, object]], roots: list[str] | None = None) -> Path:
    raw = {"system": {"cleanup_roots": roots if roots is not None else ["area"]},
           "jobs": [{"type": "data_cleanup", **j} for j in jobs],
           "notifications": {"channels": {"mail": {"type": "log"}}}}
    path = tmp_path / "farm.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _problems(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_validate_refuses_root_outside_and_symlink_escape(tmp_path: Path) -> None:
    (tmp_path / "area" / "flights").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "area" / "escape").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "area" / "inside").symlink_to(tmp_path / "area" / "flights")  # a link within the root is fine
    chore = {"chore": "cleanup_files", "older_than": "30d"}
    path = _config(tmp_path, [
        {"name": "ok", "builtin": {**chore, "folder": "area/flights"}},
        {"name": "via_inner_link", "builtin": {**chore, "folder": "area/inside"}},
        {"name": "slash", "builtin": {**chore, "folder": "/"}},
        {"name": "etc", "builtin": {**chore, "folder": "/etc"}},
        {"name": "dotdot", "builtin": {**chore, "folder": "area/../elsewhere"}},
        {"name": "escape", "builtin": {**chore, "folder": "area/escape"}},
        {"name": "digest", "type": "report_generation", "builtin": {"chore": "digest", "channels": ["nope"]}},
    ])
    text = _problems(path)
    assert "'ok'" not in text and "via_inner_link" not in text, text
    assert "job 'slash': field 'builtin': refusing to clean up /" in text
    assert f"job 'etc': field 'builtin': /etc is outside the cleanup roots ({tmp_path / 'area'})" in text
    assert f"job 'dotdot': field 'builtin': {tmp_path / 'elsewhere'} is outside the cleanup roots" in text
    assert (f"job 'escape': field 'builtin': {tmp_path / 'area' / 'escape'} resolves through a symbolic link to "
            f"{tmp_path / 'elsewhere'}, outside the cleanup roots") in text
    assert "job 'digest': field 'builtin': digest channel 'nope' is not configured; known: mail" in text


def test_validate_refuses_without_roots_and_slash_as_a_root(tmp_path: Path) -> None:
    chore = {"chore": "cleanup_files", "folder": "/srv/x", "older_than": "1d"}
    assert "no cleanup roots are configured" in _problems(_config(tmp_path, [{"name": "a", "builtin": chore}], []))
    text = _problems(_config(tmp_path, [{"name": "a", "builtin": chore}], ["/"]))
    assert "field 'system.cleanup_roots': / cannot be a cleanup root" in text and "job 'a'" not in text


def test_chore_shape_errors_name_the_job_and_field() -> None:
    raw = {"system": {"cleanup_roots": ["/srv"]}, "jobs": [
        {"name": "a", "type": "data_cleanup", "builtin": {"chore": "cleanup_files", "folder": "/srv/x"}},
        {"name": "b", "type": "data_cleanup", "builtin": {"chore": "defrag"}},
        {"name": "c", "type": "data_cleanup", "builtin": "cleanup_files"},
        {"name": "d", "type": "data_cleanup", "run": ["true"], "builtin": {"chore": "backup_history", "folder": "b"}},
        {"name": "e", "type": "data_cleanup", "builtin": {"chore": "cleanup_files", "folder": "/srv/x",
                                                          "min_free": "120%"}},
    ]}
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    text = str(info.value)
    assert "job 'a': field 'builtin': give older_than (e.g. 30d), min_free (e.g. 20% or 5GiB), or both" in text
    assert "job 'b': field 'builtin': unknown chore 'defrag'; known: backup_history, cleanup_files, digest" in text
    assert "job 'c': field 'builtin': name the chore: builtin: {chore: NAME, ...}" in text
    assert "job 'd': definition: give exactly one of run (a command), call (a Python function) or builtin" in text
    assert "job 'e': field 'builtin.min_free': expected a percentage between 0% and 100%" in text


def test_paths_are_stored_absolute(tmp_path: Path) -> None:
    config = parse_config({"system": {"cleanup_roots": ["area"]}, "jobs": [
        {"name": "tidy", "type": "data_cleanup", "builtin": {"chore": "cleanup_files", "folder": "area/x",
                                                             "min_free": "10%"}}]})
    spec = to_specs(config, tmp_path, {})["tidy"]
    assert isinstance(spec.job.builtin, CleanupFiles) and spec.job.builtin.folder == str(tmp_path / "area" / "x")
    assert resolve_system(config.system, tmp_path).cleanup_roots == [str(tmp_path / "area")]


def test_sizes() -> None:
    assert parse_free("20%") == (20.0, True)
    assert free_target("5GiB", 0) == 5 * 2**30 and free_target("500MB", 0) == 500_000_000
    assert free_target("25%", 1000) == 250
    for bad in ("0%", "100%", "lots", "-3MB"):
        with pytest.raises(ValueError):
            parse_free(bad)


def _file(path: Path, age_h: float, size: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    when = time.time() - age_h * 3600
    os.utime(path, (when, when))
    return path


def test_cleanup_older_than_recursive_patterns_and_never_links(tmp_path: Path) -> None:
    root = tmp_path / "area"
    folder = root / "flights"
    outside = _file(tmp_path / "precious.jpg", 100)
    old = [_file(folder / "a.jpg", 50), _file(folder / "f1" / "b.jpg", 49)]
    keep = [_file(folder / "c.jpg", 10), _file(folder / "old.txt", 50), _file(root / "canary.jpg", 100)]
    (folder / "link.jpg").symlink_to(outside)
    (folder / "outdir").symlink_to(tmp_path)
    os.utime(folder / "link.jpg", (0, 0), follow_symlinks=False)
    chore = CleanupFiles(chore="cleanup_files", folder=str(folder), older_than=48 * 3600, include=["*.jpg"],
                         remove_empty_dirs=True)
    (root / "alias").symlink_to(folder)  # a link that stays inside the root is followed to the folder
    dry = cleanup(chore.model_copy(update={"folder": str(root / "alias"), "dry_run": True}), [str(root)])
    assert sorted(dry.deleted) == ["a.jpg", "f1/b.jpg"] and all(p.exists() for p in old)
    report = cleanup(chore, [str(root)])
    assert sorted(report.deleted) == ["a.jpg", "f1/b.jpg"] and report.count == 2
    assert not any(p.exists() for p in old) and all(p.exists() for p in keep) and outside.exists()
    assert (folder / "link.jpg").is_symlink() and not (folder / "f1").exists() and report.removed_dirs == 1
    assert report.result()["target_met"] is None


def test_cleanup_refuses_at_run_time(tmp_path: Path) -> None:
    root = tmp_path / "area"
    root.mkdir()
    (root / "escape").symlink_to(tmp_path)
    canary = _file(tmp_path / "canary", 100)
    for folder, roots, why in ((root / "escape", [str(root)], "resolves through a symbolic link"),
                               (Path("/"), [str(root)], "refusing to clean up /"),
                               (tmp_path, [str(root)], "outside the cleanup roots"),
                               (root / "missing", [str(root)], "does not exist")):
        chore = CleanupFiles(chore="cleanup_files", folder=str(folder), older_than=1)
        with pytest.raises(CleanupRefused, match=why):
            cleanup(chore, roots)
    assert canary.exists()


def test_split_password_keeps_it_off_the_command_line() -> None:
    assert split_password("postgresql://cc:s%40cret@127.0.0.1:5433/db?sslmode=disable") == (
        "postgresql://cc@127.0.0.1:5433/db?sslmode=disable", "s@cret")
    assert split_password("postgresql://cc@h/db") == ("postgresql://cc@h/db", None)


def _report() -> DigestReport:
    now = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
    hours = [now - timedelta(hours=23 - i) for i in range(24)]
    return DigestReport(
        job="daily digest", run_id="r1", since=now - timedelta(days=1), until=now, bucket="hour", buckets=hours,
        by_job={"ndvi": {"succeeded": 3, "dead": 1}, "backup": {"succeeded": 1}},
        failures=[{"run_id": "run-9", "job": "ndvi", "state": "dead", "attempt": 2, "at": now, "error": "exit 3"}],
        failures_total=1, files={"incoming": 12}, flights={"incoming": 2},
        disks=[{"path": "/srv", "free": 2 * 2**30, "total": 8 * 2**30}, {"path": "/gone", "error": "No such file"}],
        overdue=[{"job": "report", "at": now, "resolved": False}],
        series={"succeeded": [0] * 20 + [1, 1, 1, 1], "dead": [0] * 23 + [1]})


def _pixels(png: bytes) -> set[tuple[int, int, int]]:
    """The colours of a PNG written by services/notifier/chart.py (RGB, filter 0 on every row)."""
    width, height = read_png_size(png)
    pos, idat = 8, b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, data = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + data) & 0xFFFFFFFF == struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])[0]
        if kind == b"IDAT":
            idat += data
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + width * 3)
    rows = [raw[y * (1 + width * 3) + 1:(y + 1) * (1 + width * 3)] for y in range(height)]
    return {tuple(row[x:x + 3]) for row in rows for x in range(0, len(row), 3)}  # type: ignore[misc]


def test_digest_renders_in_both_languages_with_a_chart() -> None:
    n = Notification(id="mail.digest.r1", channel="mail", group_key="digest:daily digest", status="digest",
                     alerts=[], total=0, created_at=datetime.now(UTC), digest=_report())
    msg = render_digest.email(n, "http://dash", Look("en", "Asia/Seoul"))
    assert msg["Subject"] == "[cropcron DIGEST] daily digest: 5 runs, 1 dead"
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    for expected in ("ndvi: succeeded 3, dead 1", "http://dash/runs/run-9", "incoming: 12 file(s), 2 flight(s)",
                     "/srv: 2.0 GiB free of 8.0 GiB (25%)", "/gone: cannot read (No such file)",
                     "report: overdue since 2026-12-05 00:00:00"):
        assert expected in text, (expected, text)
    images = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert len(images) == 1 and images[0]["Content-ID"] == "<digest-chart>"
    png = images[0].get_payload(decode=True)
    assert read_png_size(png) == (560, 160)
    colours = _pixels(png)
    assert render_digest.COLOURS["succeeded"] in colours and render_digest.COLOURS["dead"] in colours
    assert "cid:digest-chart" in msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    korean = render_digest.email(n, "http://dash", Look("ko", "Asia/Seoul"))
    assert korean["Subject"] == "[cropcron 요약] daily digest: 실행 5건, 실패(dead) 1건"
    html = korean.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "작업별 실행" in html and "지연된 작업" in html and "lang='ko'" in html
    slack = render_digest.slack_payload(n, "http://dash", Look("en", "UTC"))
    blob = str(slack["blocks"])
    assert "Runs by job" in blob and "<http://dash/runs/run-9|Open the run>" in blob and len(slack["blocks"]) <= 50
