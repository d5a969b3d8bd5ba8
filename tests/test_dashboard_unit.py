"""Pure parts of the dashboard: schedules in words, success rate, parameter validation, sessions
and CSRF, the cross-site check, and the token file `cropcron up` generates."""

from __future__ import annotations

import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from starlette.requests import Request

from services.dashboard.auth import OPERATOR, SESSION_COOKIE, VIEWER, Auth, Principal, cross_site, csrf_ok
from services.dashboard.backend import success_rate
from services.dashboard.params import BadParams, RunsParams, parse
from services.dashboard.settings import (
    DashboardSettings,
    TokenError,
    ensure_token_file,
    load_token,
    load_viewer_token,
)
from services.dashboard.words import cron_words

TOKEN = "unit-test-token-0123456789"


@pytest.mark.parametrize(("expr", "words"), [
    ("0 6 * * *", "every day at 06:00"),
    ("0 7 * * 1", "every Monday at 07:00"),
    ("0 7 * * MON", "every Monday at 07:00"),
    ("0 9 * * 1-5", "weekdays at 09:00"),
    ("30 2 * * 0,6", "weekends at 02:30"),
    ("0 3 1 * *", "monthly on day 1 at 03:00"),
    ("*/5 * * * *", "every 5 minutes"),
    ("15 * * * *", "every hour at minute 15"),
    ("*/15 * * * * *", "every 15 seconds"),
    ("0 0 1 1 *", "cron 0 0 1 1 *"),  # not phrased: the cron text, never a wrong sentence
    ("0 6-18/2 * * *", "cron 0 6-18/2 * * *"),
    ("0 6 * * 1#2", "cron 0 6 * * 1#2"),
])
def test_cron_words(expr: str, words: str) -> None:
    assert cron_words(expr) == words


def test_success_rate_counts_what_was_due() -> None:
    assert success_rate({}) is None
    assert success_rate({"succeeded": 3, "failed": 1, "missed": 0, "skipped": 9}) == 0.75
    assert success_rate({"succeeded": 0, "failed": 0, "missed": 2}) == 0.0


def test_runs_params() -> None:
    p = parse(RunsParams, {"job": "", "state": "dead", "since": "2h", "until": "2026-11-27T06:00", "limit": "5"})
    assert p.job is None and p.state == "dead" and p.limit == 5
    assert p.since is not None and abs(p.since - (datetime.now(UTC) - timedelta(hours=2))) < timedelta(seconds=5)
    assert p.until == datetime(2026, 11, 27, 6, tzinfo=UTC)
    for bad, param in (({"limit": "0"}, "limit"), ({"state": "nope"}, "state"), ({"since": "soon"}, "since"),
                       ({"colour": "red"}, "colour"), ({"offset": "-3"}, "offset")):
        with pytest.raises(BadParams) as exc:
            parse(RunsParams, bad)
        assert [p["param"] for p in exc.value.problems] == [param]


def _request(headers: dict[str, str], cookies: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if cookies:
        raw.append((b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()))
    return Request({"type": "http", "method": "POST", "path": "/api/x", "headers": raw, "scheme": "http",
                    "server": ("127.0.0.1", 8080), "query_string": b""})


def test_sessions_and_csrf() -> None:
    auth = Auth(TOKEN, session_ttl=60, login_attempts=3)
    assert auth.principal(_request({})) is None
    assert auth.principal(_request({"Authorization": f"Bearer {TOKEN}"})) == Principal("bearer", OPERATOR, "")
    assert auth.principal(_request({"Authorization": "Bearer nope"})) is None
    assert auth.principal(_request({"Authorization": "Bearer "})) is None
    assert auth.check_token("") is None  # no viewer token configured: the empty one is not it
    session = auth.new_session(OPERATOR)
    assert TOKEN not in session
    who = auth.principal(_request({}, {SESSION_COOKIE: session}))
    assert who is not None and who.via == "session" and who.role == OPERATOR and len(who.csrf) == 32
    assert csrf_ok(who, _request({"X-CSRF-Token": who.csrf}))
    assert not csrf_ok(who, _request({})) and not csrf_ok(who, _request({"X-CSRF-Token": "x" * 32}))
    # tampering, another token's session, expiry
    expires, role, nonce, mac = session.split(".")
    assert auth.principal(_request({}, {SESSION_COOKIE: f"{int(expires) + 999}.{role}.{nonce}.{mac}"})) is None
    assert Auth("another-token-0123456789", 60, 3).principal(_request({}, {SESSION_COOKIE: session})) is None
    old = Auth(TOKEN, session_ttl=-1, login_attempts=3).new_session(OPERATOR)
    assert auth.principal(_request({}, {SESSION_COOKIE: old})) is None
    # a viewer reads; its session cannot be promoted by editing the role
    both = Auth(TOKEN, 60, 3, viewer_token="viewer-token-0123456789")
    assert both.check_token("viewer-token-0123456789") == VIEWER and both.check_token(TOKEN) == OPERATOR
    viewer = both.new_session(VIEWER)
    assert both.principal(_request({}, {SESSION_COOKIE: viewer})).role == VIEWER  # type: ignore[union-attr]
    assert both.principal(_request({}, {SESSION_COOKIE: viewer.replace(".viewer.", ".operator.")})) is None
    assert both.principal(_request({}, {SESSION_COOKIE: session})) is None  # adding a viewer token ends sessions
    # login rate limit
    for _ in range(3):
        assert not auth.login_blocked("10.0.0.1")
        auth.login_failed("10.0.0.1")
    assert auth.login_blocked("10.0.0.1") and not auth.login_blocked("10.0.0.2")


def test_cross_site_check() -> None:
    assert cross_site(_request({})) is None  # not a browser (curl): the token still decides
    assert cross_site(_request({"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:8080",
                                "Host": "127.0.0.1:8080"})) is None
    assert cross_site(_request({"Sec-Fetch-Site": "none"})) is None  # typed into the address bar
    assert "Sec-Fetch-Site: cross-site" in (cross_site(_request({"Sec-Fetch-Site": "cross-site"})) or "")
    assert cross_site(_request({"Sec-Fetch-Site": "same-site"}))
    assert cross_site(_request({"Origin": "http://evil.example", "Host": "127.0.0.1:8080"}))
    assert cross_site(_request({"Origin": "null", "Host": "127.0.0.1:8080"}))


def test_token_file_for_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CROPCRON_DASHBOARD_TOKEN", raising=False)
    monkeypatch.delenv("CROPCRON_DASHBOARD_TOKEN_FILE", raising=False)
    with pytest.raises(TokenError, match="needs an access token"):
        load_token(DashboardSettings())
    path = ensure_token_file(tmp_path)
    assert path == tmp_path / "dashboard-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = load_token(DashboardSettings())
    assert len(token) >= 30
    mtime = path.stat().st_mtime_ns
    time.sleep(0.01)
    monkeypatch.delenv("CROPCRON_DASHBOARD_TOKEN_FILE")
    ensure_token_file(tmp_path)  # kept across restarts: the same token
    assert path.stat().st_mtime_ns == mtime and load_token(DashboardSettings()) == token
    monkeypatch.setenv("CROPCRON_DASHBOARD_TOKEN", "short")
    assert ensure_token_file(tmp_path / "other") is None  # configured: nothing generated
    with pytest.raises(TokenError, match="at least 16"):
        load_token(DashboardSettings())
    with pytest.raises(TokenError, match="must differ"):
        load_viewer_token(DashboardSettings(viewer_token=TOKEN), TOKEN)
    monkeypatch.delenv("CROPCRON_DASHBOARD_TOKEN")
    monkeypatch.setenv("CROPCRON_DASHBOARD_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(TokenError, match="cannot read"):
        load_token(DashboardSettings())
