"""Notifier delivery against real peers: aiosmtpd as the SMTP server, a local HTTP server as the
Slack webhook, real NATS and Postgres (the `system` fixture runs the services in-process)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from conftest import System, wait_for
from notify_helpers import apply_all, fast_notify, history_alerts, notifications, raise_alert
from peers_mail import MailServer
from peers_slack import SlackServer
from prometheus_client import REGISTRY

from shared.bus import Bus
from shared.events import Alert, utcnow

FAILING_JOB = """
jobs:
  - name: ndvi_morning
    type: image_processing
    max_retries: 1
    retry_delay: 0.5s
    retry_jitter: 0
    run: ["{python}", "-c", "import sys; print('reading tiles'); print('tile 17 corrupt'); sys.exit(3)"]
"""


def _alert(job: str, n: int = 0, kind: str = "dead") -> Alert:
    return Alert(id=f"t.{job}.{kind}.{n}", level="error", kind=kind, summary=f"{job}: {kind} #{n}", job=job,
                 run_id=f"run-{job}-{n}", source="test", at=utcnow(),
                 details={"state": "dead", "attempt": 2, "error": "exit code 3", "output_tail": "tile 17 corrupt"})


async def test_dead_job_one_email_one_slack_with_details(system: System, bus: Bus,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fast_notify(monkeypatch)
    with MailServer() as mail, SlackServer() as slack:
        monkeypatch.setenv("TEST_SLACK_WEBHOOK", slack.url)
        await apply_all(bus, FAILING_JOB, notifications(mail.port))
        await system.start("history", "runner", "notifier")
        from cropcron import commands

        run = await commands.run_now(bus, "ndvi_morning", wait=None)
        await wait_for(lambda: _now(mail.handler.delivered() and slack.ok()), 60, "an email and a Slack message")
        # the group window and interval have passed well before this: nothing else is coming
        await wait_for(lambda: _deliveries_sent(bus, 2), 30, "both deliveries recorded in history")
        await asyncio.sleep(3)
        assert len(mail.handler.delivered()) == 1 and len(slack.ok()) == 1
        body = mail.handler.delivered()[0]
        text = body.text()
        for expected in ("ndvi_morning", run["run_id"], "state: dead", "attempt: 2", "exit code: 3", "exited with code 3",
                         "tile 17 corrupt", f"http://127.0.0.1:8080/runs/{run['run_id']}"):
            assert expected in text, f"{expected!r} missing from the email:\n{text}"
        assert run["run_id"] in body.html() and "tile 17 corrupt" in body.html()
        assert body.message["Subject"].startswith("[cropcron FIRING] ERROR ndvi_morning: dead after 2 attempt(s)")
        blocks = json.dumps(slack.ok()[0].body["blocks"])
        for expected in ("ndvi_morning", run["run_id"], "tile 17 corrupt", f"/runs/{run['run_id']}|Open the run"):
            assert expected in blocks
        rows = await history_alerts(bus, job="ndvi_morning")
        assert [r["kind"] for r in rows] == ["dead"]
        assert sorted(d["channel"] for d in rows[0]["deliveries"]) == ["mail", "slack"]


async def _now(value: object) -> object:
    return value


async def _deliveries_sent(bus: Bus, count: int) -> bool:
    rows = await history_alerts(bus)
    return sum(1 for r in rows for d in r["deliveries"] if d["outcome"] == "sent") >= count


async def test_smtp_transient_replies_then_250_delivered_once(system: System, bus: Bus,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fast_notify(monkeypatch)
    script = ["421 4.3.0 try again later", "450 4.2.0 mailbox busy", "450 4.2.0 mailbox busy"]
    with MailServer(script) as mail:
        await apply_all(bus, "", notifications(mail.port, slack=False))
        await system.start("history", "notifier")
        await raise_alert(bus, _alert("backup"))
        await wait_for(lambda: _now(mail.handler.delivered()), 60, "the email after three transient replies")
        await wait_for(lambda: _deliveries_sent(bus, 1), 30, "the sent delivery in history")
        await asyncio.sleep(2)
        assert [r.reply[:3] for r in mail.handler.received] == ["421", "450", "450", "250"]
        assert len({r.message_id for r in mail.handler.received}) == 1, "one message, retried"
        rows = await history_alerts(bus)
        outcomes = [d["outcome"] for d in rows[0]["deliveries"]]
        assert outcomes == ["retry", "retry", "retry", "sent"]
        # retried with backoff, not hammered
        gaps = [b.at - a.at for a, b in zip(mail.handler.received, mail.handler.received[1:], strict=False)]
        assert all(g >= 0.2 for g in gaps), gaps


async def test_smtp_550_not_retried_recorded_and_escalated_to_slack_once(system: System, bus: Bus,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fast_notify(monkeypatch)
    with MailServer(["550 5.1.1 no such user"]) as mail, SlackServer() as slack:
        monkeypatch.setenv("TEST_SLACK_WEBHOOK", slack.url)
        notify = notifications(mail.port, email_extra={"escalate_to": "slack"},
                               rules=[{"channels": ["mail"]}])
        await apply_all(bus, "", notify)
        await system.start("history", "notifier")
        await raise_alert(bus, _alert("backup"))
        await wait_for(lambda: _now(slack.ok()), 30, "the escalation on Slack")
        await asyncio.sleep(3)
        assert len(mail.handler.received) == 1, "550 is permanent: never retried"
        assert len(slack.ok()) == 1
        assert "failed permanently" in json.dumps(slack.ok()[0].body) and "550" in json.dumps(slack.ok()[0].body)

        async def recorded() -> list[str]:
            rows = await history_alerts(bus)
            return [f"{d['channel']}:{d['outcome']}" for r in rows for d in r["deliveries"]]

        outcomes = await wait_for(lambda: _has(recorded, 3), 20, "failed, escalated and sent records")
        assert sorted(outcomes) == ["mail:escalated", "mail:failed", "slack:sent"]


async def _has(fn, count: int):  # type: ignore[no-untyped-def]
    value = await fn()
    return value if len(value) >= count else None


async def test_slack_429_retry_after_honoured(system: System, bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_notify(monkeypatch)
    with SlackServer([(429, {"Retry-After": "5"}, "rate_limited")]) as slack:
        monkeypatch.setenv("TEST_SLACK_WEBHOOK", slack.url)
        await apply_all(bus, "", notifications(None))
        await system.start("notifier")
        await raise_alert(bus, _alert("report"))
        await wait_for(lambda: _now(slack.ok()), 30, "the Slack message after the 429")
        await asyncio.sleep(2)
        first, second = slack.requests[0], slack.requests[1]
        assert first.status == 429 and second.status == 200
        assert second.at - first.at >= 5.0, f"retried after {second.at - first.at:.2f}s, before Retry-After"
        assert len(slack.requests) == 2 and len(slack.ok()) == 1


async def test_slack_rate_at_most_about_one_per_second(system: System, bus: Bus,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fast_notify(monkeypatch, CROPCRON_SLACK_BURST="1")
    with SlackServer() as slack:
        monkeypatch.setenv("TEST_SLACK_WEBHOOK", slack.url)
        await apply_all(bus, "", notifications(None, group_window="0.2s"))
        await system.start("notifier")
        for i in range(5):  # five jobs: five groups, five messages
            await raise_alert(bus, _alert(f"job{i}"))
        await wait_for(lambda: _now(len(slack.ok()) >= 5), 30, "five Slack messages")
        times = [r.at for r in slack.requests]
        # burst 1, 1 message/s: five messages take at least four seconds
        assert times[-1] - times[0] >= 3.5, f"5 messages in {times[-1] - times[0]:.2f}s"


async def test_slack_500_retried_404_permanent_and_escalated_by_email_once(system: System, bus: Bus,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fast_notify(monkeypatch)
    script = [(500, {}, "internal_error"), (200, {}, "ok"), (404, {}, "no_service")]
    with MailServer() as mail, SlackServer(script) as slack:
        monkeypatch.setenv("TEST_SLACK_WEBHOOK", slack.url)
        notify = notifications(mail.port, rules=[{"channels": ["slack"]}])
        notify["channels"]["slack"]["escalate_to"] = "mail"
        await apply_all(bus, "", notify)
        counters = ("sent", "retried", "failed")
        before = {(c, ch): _count(c, ch) for c in counters for ch in ("slack", "mail")}
        await system.start("history", "notifier")
        await raise_alert(bus, _alert("first"))
        await wait_for(lambda: _now(slack.ok()), 30, "the first alert on Slack after a 500")
        assert [r.status for r in slack.requests] == [500, 200]
        await raise_alert(bus, _alert("second"))  # the webhook is revoked now: 404
        await wait_for(lambda: _now(mail.handler.delivered()), 30, "the escalation by email")
        await asyncio.sleep(3)
        assert [r.status for r in slack.requests] == [500, 200, 404], "404 is permanent: not retried"
        assert len(mail.handler.delivered()) == 1
        text = mail.handler.delivered()[0].text()
        assert "Delivery via 'slack' failed permanently (Slack 404" in text and "second" in text
        assert "secret-token" not in text, "the webhook URL is a secret"
        assert "secret-token" not in caplog.text, "the webhook URL must never be logged"
        assert "Slack 404" in caplog.text
        # and on /metrics (issue 10): Slack sent once, retried once, failed once; the escalation sent
        assert {k: _count(*k) - v for k, v in before.items()} == {
            ("sent", "slack"): 1, ("retried", "slack"): 1, ("failed", "slack"): 1,
            ("sent", "mail"): 1, ("retried", "mail"): 0, ("failed", "mail"): 0}


def _count(what: str, channel: str) -> float:
    return REGISTRY.get_sample_value(f"cropcron_alerts_{what}_total", {"channel": channel}) or 0.0


async def test_starttls_and_login_with_a_password_file_then_535_is_permanent(
        system: System, bus: Bus, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from peers_mail import TlsMailServer, self_signed

    fast_notify(monkeypatch)
    cert, key = self_signed(tmp_path)
    secret = tmp_path / "smtp_password"
    secret.write_text("s3cret-pw\n")  # a compose secret file ends with a newline
    with TlsMailServer(cert, key, "alerts", "s3cret-pw") as mail:
        notify = notifications(mail.port, slack=False, email_extra={
            "security": "starttls", "username": "alerts", "password_file": str(secret), "ca_file": cert})
        await apply_all(bus, "", notify)
        await system.start("history", "notifier")
        await raise_alert(bus, _alert("tls"))
        await wait_for(lambda: _now(mail.handler.delivered()), 30, "the email over STARTTLS after login")
        assert mail.accounts.attempts == [b"alerts"]
        # the password changes on the server: 535 is a configuration error, never retried
        secret.write_text("outdated")
        await raise_alert(bus, _alert("tls2"))

        async def failed() -> list:
            rows = await history_alerts(bus)
            return [d for r in rows for d in r["deliveries"] if d["outcome"] == "failed"]

        records = await wait_for(failed, 30, "the 535 recorded as failed")
        assert "535" in records[0]["error"] and "outdated" not in records[0]["error"]
        await asyncio.sleep(3)
        rows = await history_alerts(bus)
        outcomes = [d["outcome"] for r in rows if r["id"] == _alert("tls2").id for d in r["deliveries"]]
        assert outcomes == ["failed"], "535 is permanent: one attempt, no retry"
        # one SMTP conversation (aiosmtplib tries the server's mechanisms, PLAIN then LOGIN, in it)
        assert len(mail.accounts.attempts) <= 3, mail.accounts.attempts
        assert len(mail.handler.delivered()) == 1
