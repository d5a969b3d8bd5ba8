"""Pure notifier logic: config validation, routing, grouping, grace derivation, rendering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.notifier import groups as g
from services.notifier import render
from services.notifier.channels import TokenBucket
from services.notifier.deadman import grace_for, overdue_instant, since_when
from services.notifier.rules import alert_from_run, route
from services.notifier.state import JobWatch
from shared.config import ConfigError, JobConfig, JobSpec, parse_config
from shared.events import Alert, RunEvent, RunState
from shared.notify_config import (
    NotificationsConfig,
    OverdueConfig,
    SecretError,
    parse_notifications,
    read_secret,
    secret_problems,
)

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
TIMING = g.Timing(group_window=30, group_interval=300, repeat_interval=3600, max_alerts=5)

GOOD = {
    "channels": {
        "ops-mail": {"type": "email", "host": "smtp.farm.example", "port": 587, "username": "alerts",
                     "password_env": "SMTP_PASSWORD", "from": "cropcron@farm.example", "to": ["ops@farm.example"],
                     "escalate_to": "ops-slack"},
        "ops-slack": {"type": "slack", "webhook_url_env": "SLACK_WEBHOOK"},
        "log": {"type": "log"},
    },
    "rules": [
        {"name": "failures", "when": ["dead", "timeout", "overdue"], "channels": ["ops-mail", "ops-slack"]},
        {"name": "backups", "when": ["succeeded"], "types": ["database_backup"], "channels": ["log"]},
        {"name": "ndvi", "when": ["failed"], "jobs": ["ndvi_*"], "min_level": "warning", "channels": ["ops-slack"]},
    ],
}


def _problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config({"notifications": raw})
    return exc.value.problems


def test_good_config_parses_and_names_secrets_not_values() -> None:
    config = parse_config({"notifications": GOOD}).notifications
    assert set(config.channels) == {"ops-mail", "ops-slack", "log"}
    assert secret_problems(config, {"SMTP_PASSWORD": "pw", "SLACK_WEBHOOK": "https://hooks.slack.com/x"}) == []


@pytest.mark.parametrize(("channel", "expected"), [
    ({"type": "slack", "webhook_url": "https://hooks.slack.com/x"},
     "channel 'c': field 'webhook_url': secrets are not read from the YAML; name an environment variable "
     "(webhook_url_env) or a file (webhook_url_file)"),
    ({"type": "email", "host": "h", "from": "a@b", "to": ["x@y"], "password": "pw"},
     "channel 'c': field 'password': secrets are not read from the YAML"),
    ({"type": "slack"}, "channel 'c': definition: give exactly one of webhook_url_env"),
    ({"type": "email", "host": "h", "from": "a@b", "to": ["nobody"]},
     "channel 'c': field 'to': expected an email address like ops@example.org, got 'nobody'"),
    ({"type": "email", "host": "h", "from": "a@b", "to": ["x@y"], "username": "u"},
     "channel 'c': definition: username needs password_env"),
    ({"type": "email", "host": "h", "from": "a@b", "to": ["x@y"], "security": "ssl"},
     "channel 'c': field 'security': Input should be 'starttls', 'tls' or 'none'"),
    ({"type": "pager"}, "channel 'c': field 'type': unknown channel type 'pager'; known: email, slack, log"),
    ({"type": "log", "colour": "red"}, "channel 'c': field 'colour': unknown field"),
])
def test_bad_channel_errors_name_channel_field_and_reason(channel: dict, expected: str) -> None:
    problems = _problems({"channels": {"c": channel}})
    assert any(p.startswith("notifications: " + expected) for p in problems), problems


def test_bad_rules_and_references() -> None:
    problems = _problems({"channels": {"a": {"type": "log", "escalate_to": "a"}},
                          "rules": [{"name": "r1", "channels": ["b"]}, {"min_level": "loud", "channels": ["a"]}],
                          "group_window": "soon"})
    assert "notifications: field 'group_window': expected a duration like '90s', '5m' or '2h', got 'soon'" in problems
    assert any(p.startswith("notifications: rule #2: field 'min_level'") for p in problems), problems
    problems = _problems({"channels": {"a": {"type": "log", "escalate_to": "a"}}, "rules": [{"name": "r1",
                                                                                          "channels": ["b"]}]})
    assert "notifications: rule 'r1': field 'channels': unknown channel 'b'; known: a" in problems
    assert "notifications: channel 'a': field 'escalate_to': cannot escalate to itself" in problems


def test_secret_problems_missing_variable_file_and_malformed_url(tmp_path) -> None:
    config, _ = parse_notifications({"channels": {
        "s": {"type": "slack", "webhook_url_env": "HOOK"},
        "f": {"type": "slack", "webhook_url_file": str(tmp_path / "missing")},
        "m": {"type": "email", "host": "h", "from": "a@b", "to": ["x@y"], "username": "u", "password_env": "PW"}}})
    assert config is not None
    problems = secret_problems(config, {"HOOK": "hooks.slack.com/services/T/B/SECRET"})
    assert "notifications: channel 's': field 'webhook_url_env': webhook URL must start with https:// " \
           "(got scheme 'none')" in problems
    assert any("channel 'f': field 'webhook_url_file': cannot read secret file" in p for p in problems)
    assert "notifications: channel 'm': field 'password_env': environment variable PW is not set (nor PW_FILE)" \
        in problems
    assert not any("SECRET" in p for p in problems), "never echo the webhook URL"


def test_a_variable_unset_falls_back_to_its_FILE_twin(tmp_path) -> None:
    """compose: CROPCRON_SLACK_WEBHOOK_FILE=/run/secrets/slack_webhook serves webhook_url_env."""
    (tmp_path / "hook").write_text("https://hooks.slack.com/services/T/B/SECRET\n")
    assert read_secret("HOOK", None, "w", {"HOOK_FILE": str(tmp_path / "hook")}).endswith("/SECRET")
    assert read_secret("HOOK", None, "w", {"HOOK": "https://set", "HOOK_FILE": "/nowhere"}) == "https://set"
    with pytest.raises(SecretError, match=r"w \(HOOK_FILE\): cannot read secret file .*/missing"):
        read_secret("HOOK", None, "w", {"HOOK_FILE": str(tmp_path / "missing")})
    with pytest.raises(SecretError, match="environment variable HOOK is not set \\(nor HOOK_FILE\\)"):
        read_secret("HOOK", None, "w", {})


def _run(state: RunState, **kw: object) -> RunEvent:
    return RunEvent(run_id="r1", job=str(kw.pop("job", "ndvi_morning")), job_type=str(kw.pop("job_type",
                    "image_processing")), state=state, attempt=int(kw.pop("attempt", 1)), at=T0, **kw)  # type: ignore[arg-type]


def test_rules_route_by_kind_job_type_and_level() -> None:
    config = parse_config({"notifications": GOOD}).notifications
    dead = alert_from_run(_run(RunState.DEAD, attempt=3, error="boom"), config)
    assert dead is not None and dead.kind == "dead" and dead.level == "error"
    assert route(config, dead) == ["ops-mail", "ops-slack"]
    timeout = alert_from_run(_run(RunState.FAILED, timed_out=True), config)
    assert timeout is not None and timeout.kind == "timeout"
    failed = alert_from_run(_run(RunState.FAILED, error="x"), config)
    assert failed is not None and route(config, failed) == ["ops-slack"]  # rule "ndvi": ndvi_* only
    assert alert_from_run(_run(RunState.FAILED, job="backup", error="x"), config) is None  # nobody asked
    assert alert_from_run(_run(RunState.SUCCEEDED), config) is None
    ok = alert_from_run(_run(RunState.SUCCEEDED, job="backup", job_type="database_backup"), config)
    assert ok is not None and route(config, ok) == ["log"]
    assert alert_from_run(_run(RunState.STARTED), config) is None


def _alert(n: int, resolved: bool = False) -> Alert:
    return Alert(id=f"a{n}", level="error", kind="dead", summary=f"dead #{n}", job="j", source="t", at=T0,
                 resolved=resolved)


def test_grouping_window_interval_repeat_and_one_resolved() -> None:
    group = g.Group(channel="c", key="dead:j")
    assert g.add(group, _alert(0), T0, TIMING)
    assert g.take_due(group, T0 + timedelta(seconds=29), TIMING) is None
    for n in range(1, 200):  # a storm inside the window
        g.add(group, _alert(n), T0 + timedelta(seconds=n / 10), TIMING)
    assert not g.add(group, _alert(5), T0, TIMING), "a redelivered alert is not counted twice"
    first = g.take_due(group, T0 + timedelta(seconds=30), TIMING)
    assert first is not None and first.status == "firing" and first.total == 200 and len(first.alerts) == 5
    assert first.id == f"c.{g.group_hash('dead:j')}.0"
    # more alerts wait for the group interval
    g.add(group, _alert(500), T0 + timedelta(seconds=40), TIMING)
    assert g.take_due(group, T0 + timedelta(seconds=300), TIMING) is None
    second = g.take_due(group, T0 + timedelta(seconds=330), TIMING)
    assert second is not None and second.total == 1 and second.id.endswith(".1")
    # still firing, nothing new: a reminder after the repeat interval
    assert g.take_due(group, T0 + timedelta(seconds=330 + 3599), TIMING) is None
    repeat = g.take_due(group, T0 + timedelta(seconds=330 + 3600), TIMING)
    assert repeat is not None and repeat.status == "repeat"
    # resolved: exactly one message, then silence
    when = T0 + timedelta(seconds=5000)
    assert g.add(group, _alert(900, resolved=True), when, TIMING)
    resolved = g.take_due(group, when, TIMING)
    assert resolved is not None and resolved.status == "resolved"
    assert not group.active
    assert not g.add(group, _alert(901, resolved=True), when, TIMING), "nothing firing: nothing to resolve"
    assert g.take_due(group, when + timedelta(days=1), TIMING) is None


def _spec(**job: object) -> JobSpec:
    return JobSpec(job=JobConfig(name="j", type="data_cleanup", call="m:f", **job), timezone="UTC", cwd="/",  # type: ignore[arg-type]
                   defined_at=T0 - timedelta(days=1))


def test_grace_defaults_from_the_schedule() -> None:
    cfg = OverdueConfig()
    hourly, minutely, daily = _spec(schedule="0 * * * *"), _spec(interval=60), _spec(schedule="0 6 * * *")
    assert grace_for(hourly, T0, T0 + timedelta(hours=1), cfg) == 1800  # half the period
    assert grace_for(minutely, T0, T0 + timedelta(minutes=1), cfg) == 60  # at least a minute
    assert grace_for(daily, T0, T0 + timedelta(days=1), cfg) == 3600  # at most an hour
    assert grace_for(daily, T0, None, OverdueConfig(grace=5, jobs={"j": 7})) == 7


def test_overdue_instant_from_last_success_and_schedule() -> None:
    spec = _spec(interval=600)
    cfg = OverdueConfig()
    since = since_when(spec, JobWatch(last_success=T0), None, T0 + timedelta(days=1))
    assert since == T0, "a known last success wins over the notifier's start"
    # next expected 06:10, grace 300 s: not overdue at 06:14, overdue at 06:15
    assert overdue_instant(spec, since, T0 + timedelta(minutes=14), cfg) is None
    assert overdue_instant(spec, since, T0 + timedelta(minutes=15), cfg) == (T0 + timedelta(minutes=10), 300)
    assert overdue_instant(_spec(), since, T0 + timedelta(days=9), cfg) is None  # on demand
    assert overdue_instant(_spec(interval=600, enabled=False), since, T0 + timedelta(days=9), cfg) is None
    # resumed after a week's pause: expected from the resumption, not from the old success
    resumed = T0 + timedelta(days=7)
    assert since_when(spec, JobWatch(last_success=T0), resumed, T0) == resumed
    # no success known: from when the notifier started watching (no false alarm about the past)
    assert since_when(spec, JobWatch(), None, T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)


def test_token_bucket_paces_and_holds_for_retry_after() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0)
    assert bucket.delay() == 0
    bucket.take()
    assert 0.9 < bucket.delay() <= 1.0
    bucket.hold(5)
    assert 4.9 < bucket.delay() <= 5.0


def test_render_has_details_and_escapes() -> None:
    alert = Alert(id="x", level="error", kind="dead", summary="j: <dead> & gone", job="j", run_id="r9", source="t",
                  at=T0, details={"state": "dead", "attempt": 3, "error": "exit 1", "output_tail": "a\nb <c>"})
    from shared.events import Notification

    n = Notification(id="c.h.0", channel="c", group_key="dead:j", status="firing", alerts=[alert], total=1,
                     created_at=T0)
    text = render.text_body(n, "http://127.0.0.1:8080/")
    assert "http://127.0.0.1:8080/runs/r9" in text and "attempt: 3" in text and "| b <c>" in text
    assert "&lt;dead&gt; &amp; gone" in render.html_body(n, "http://x")
    payload = render.slack_payload(n, "http://x")
    assert payload["text"].startswith("[cropcron FIRING] ERROR j: <dead>")
    assert "&lt;dead&gt;" in str(payload["blocks"])


def test_config_round_trips_through_kv_form() -> None:
    from services.notifier.state import config_bytes

    config = parse_config({"notifications": GOOD}).notifications
    assert NotificationsConfig.model_validate_json(config_bytes(config)) == config


async def test_log_channel_logs_at_the_alert_level(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from services.notifier.channels import LogSender
    from shared.events import Notification
    from shared.notify_config import LogChannel

    alert = Alert(id="x", level="critical", kind="service_down", summary="timer silent", source="t", at=T0)
    n = Notification(id="log.h.0", channel="log", group_key="service_down:timer", status="firing", alerts=[alert],
                     total=1, created_at=T0)
    with caplog.at_level(logging.INFO, logger="cropcron.alerts"):
        assert await LogSender("log", LogChannel(type="log"), "http://x").send(n) is None
        await LogSender("log", LogChannel(type="log"), "http://x").send(n.model_copy(update={"status": "resolved"}))
    assert [r.levelno for r in caplog.records] == [logging.CRITICAL, logging.INFO]
    assert "timer silent" in caplog.records[0].getMessage()
