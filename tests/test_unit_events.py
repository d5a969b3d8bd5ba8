"""Bus messages: round trips, forward compatibility, version refusal, deterministic tick ids."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.events import (
    SCHEMA_VERSION,
    Rejected,
    RunEvent,
    RunState,
    Trigger,
    decode,
    manual_run_id,
    tick_run_id,
)

AT = datetime(2026, 5, 1, 6, 0, tzinfo=UTC)


def _trigger(**fields: object) -> Trigger:
    base: dict[str, object] = dict(run_id=tick_run_id("nightly_backup", AT), job="nightly_backup", kind="tick",
                                   scheduled_at=AT, created_at=AT + timedelta(seconds=1))
    base.update(fields)
    return Trigger.model_validate(base)


def _event(**fields: object) -> RunEvent:
    base: dict[str, object] = dict(run_id="r1", job="nightly_backup", job_type="database_backup",
                                   state=RunState.FAILED, attempt=2, at=AT, trigger_kind="tick", scheduled_at=AT,
                                   started_at=AT, finished_at=AT + timedelta(seconds=3), duration_s=3.0,
                                   exit_code=3, error="exited with code 3", output_tail="a\nb",
                                   result={"n": [1, 2.5, "x", None, True]}, runner="r-1")
    base.update(fields)
    return RunEvent.model_validate(base)


def test_trigger_round_trip() -> None:
    trig = _trigger(requested_by="alice", data={"file": "/data/a b.jpg", "size": 12, "tags": ["x"]})
    back = decode(Trigger, trig.to_bytes())
    assert back == trig
    assert back.scheduled_at == AT and back.data["file"] == "/data/a b.jpg"
    assert back.schema_version == SCHEMA_VERSION


def test_manual_trigger_round_trip_without_optional_fields() -> None:
    trig = Trigger(run_id=manual_run_id(), job="j", kind="manual", created_at=AT)
    raw = json.loads(trig.to_bytes())
    assert "scheduled_at" not in raw and "requested_by" not in raw  # None is not sent
    assert decode(Trigger, trig.to_bytes()) == trig


@pytest.mark.parametrize("state", list(RunState))
def test_run_event_round_trip(state: RunState) -> None:
    ev = _event(state=state, next_attempt_at=AT + timedelta(minutes=5), reason="why", timed_out=True)
    back = decode(RunEvent, ev.to_bytes())
    assert back == ev
    assert back.msg_id() == f"r1.2.{state.value}"


def test_run_event_minimal() -> None:
    ev = RunEvent(run_id="r", job="j", state=RunState.MISSED, attempt=0, at=AT, reason="timer was down")
    assert decode(RunEvent, ev.to_bytes()) == ev


def test_rejected_round_trip() -> None:
    rej = Rejected(source="trigger", subject="cropcron.trigger.high.x", reason="bad", at=AT,
                   payload_excerpt="\ufffd{")
    assert decode(Rejected, rej.to_bytes()) == rej


def test_unknown_fields_are_ignored() -> None:
    raw = json.loads(_trigger().to_bytes())
    raw["added_in_a_later_minor_version"] = {"anything": [1, 2]}
    raw["priority_hint"] = 7
    back = decode(Trigger, json.dumps(raw).encode())
    assert back == _trigger()
    assert not hasattr(back, "priority_hint")
    ev = json.loads(_event().to_bytes())
    ev["new_field"] = "x"
    assert decode(RunEvent, json.dumps(ev).encode()) == _event()


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, SCHEMA_VERSION + 100])
def test_higher_schema_version_is_refused(version: int) -> None:
    raw = json.loads(_trigger().to_bytes())
    raw["schema_version"] = version
    with pytest.raises(ValueError, match="schema_version"):
        decode(Trigger, json.dumps(raw).encode())
    ev = json.loads(_event().to_bytes())
    ev["schema_version"] = version
    with pytest.raises(ValueError, match="schema_version"):
        decode(RunEvent, json.dumps(ev).encode())


def test_current_and_missing_schema_version_accepted() -> None:
    raw = json.loads(_trigger().to_bytes())
    assert raw["schema_version"] == SCHEMA_VERSION
    del raw["schema_version"]
    assert decode(Trigger, json.dumps(raw).encode()).schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("payload", [b"", b"not json", b"{", b"[1, 2]", b"null", b'"string"', b"\xff\xfe",
                                     b'{"run_id": "r"}'])
def test_invalid_payload_raises(payload: bytes) -> None:
    with pytest.raises(ValueError):  # pydantic.ValidationError is a ValueError
        decode(Trigger, payload)


@pytest.mark.parametrize(("field", "value"), [("kind", "cron"), ("run_id", ""), ("run_id", "x" * 129),
                                              ("job", ""), ("created_at", "yesterday")])
def test_invalid_trigger_fields(field: str, value: object) -> None:
    raw = json.loads(_trigger().to_bytes())
    raw[field] = value
    with pytest.raises(ValidationError):
        decode(Trigger, json.dumps(raw).encode())


def test_missing_run_id_is_rejected() -> None:
    raw = json.loads(_trigger().to_bytes())
    del raw["run_id"]
    with pytest.raises(ValidationError):
        decode(Trigger, json.dumps(raw).encode())


def test_negative_attempt_rejected() -> None:
    with pytest.raises(ValidationError):
        _event(attempt=-1)


def test_messages_are_frozen() -> None:
    trig = _trigger()
    with pytest.raises(ValidationError):
        trig.job = "other"  # type: ignore[misc]


# -- tick_run_id ----------------------------------------------------------------------------------------


def test_tick_run_id_is_deterministic_and_distinct() -> None:
    a = tick_run_id("nightly_backup", AT)
    assert a == tick_run_id("nightly_backup", AT)
    assert len(a) == 32 and all(c in "0123456789abcdef" for c in a)
    assert a != tick_run_id("nightly_backup", AT + timedelta(seconds=1))
    assert a != tick_run_id("nightly_backup", AT + timedelta(microseconds=1))
    assert a != tick_run_id("nightly_backupx", AT)
    assert a != tick_run_id("weekly_report", AT)


def test_tick_run_id_is_known_value() -> None:
    # a stable contract across versions: timers of different versions must derive the same id
    import hashlib

    stamp = "2026-05-01T06:00:00.000000Z"
    assert tick_run_id("nightly_backup", AT) == hashlib.sha256(
        f"tick\0nightly_backup\0{stamp}".encode()).hexdigest()[:32]


@pytest.mark.parametrize("tz", [ZoneInfo("Asia/Seoul"), ZoneInfo("America/New_York"), UTC,
                                timezone(timedelta(hours=-3, minutes=-30)), ZoneInfo("Australia/Lord_Howe")])
def test_tick_run_id_independent_of_tz_representation(tz: object) -> None:
    assert tick_run_id("j", AT.astimezone(tz)) == tick_run_id("j", AT)  # type: ignore[arg-type]


def test_tick_run_id_in_a_repeated_hour() -> None:
    # the two 01:30s of New York's fall-back are different instants, so different ids
    ny = ZoneInfo("America/New_York")
    first = datetime(2025, 11, 2, 1, 30, tzinfo=ny, fold=0)
    second = datetime(2025, 11, 2, 1, 30, tzinfo=ny, fold=1)
    assert tick_run_id("j", first) != tick_run_id("j", second)
    assert tick_run_id("j", second) == tick_run_id("j", second.astimezone(UTC))


def test_tick_run_id_survives_a_round_trip() -> None:
    trig = _trigger()
    back = decode(Trigger, trig.to_bytes())
    assert back.scheduled_at is not None
    assert tick_run_id(back.job, back.scheduled_at) == trig.run_id


@given(
    job=st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    instants=st.lists(st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1)), min_size=2, max_size=5,
                      unique=True),
    offset=st.integers(-14 * 60, 14 * 60),
)
@settings(max_examples=100, deadline=None)
def test_tick_run_id_properties(job: str, instants: list[datetime], offset: int) -> None:
    aware = [t.replace(tzinfo=UTC) for t in instants]
    ids = [tick_run_id(job, t) for t in aware]
    assert len(set(ids)) == len(ids), "two instants share an id"
    shifted = timezone(timedelta(minutes=offset))
    assert [tick_run_id(job, t.astimezone(shifted)) for t in aware] == ids
    assert all(tick_run_id(job + "x", t) not in ids for t in aware)


def test_manual_run_ids_are_unique_and_distinct_from_ticks() -> None:
    ids = {manual_run_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("m") and len(i) == 32 for i in ids)
