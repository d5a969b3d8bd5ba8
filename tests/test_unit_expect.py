"""The data alarms' rules (services/notifier/expect.py) as plain logic: when `no_uploads` is
raised, once a day, and resolved; which flights are incomplete; and the config's checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.notifier.expect import Expected, judge_day, judge_flights
from services.notifier.state import ExpectState
from shared.config import ConfigError, parse_config
from shared.watch_config import Expectation

SEOUL = ZoneInfo("Asia/Seoul")
WATCH = Expected("watch:drone", "drone", None, Expectation(by="10:00"))
TWO = Expected("job:mosaic", "drone", "mosaic", Expectation(by="10:00", flights_per_day=2, min_files=250))


def _day(files: int = 0, unbatched: int = 0, flights: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"files": files, "unbatched": unbatched, "flights": flights or [], "last_file_at": None}


def _flight(fid: str, files: int, partial: bool = False, job: str = "mosaic", minutes: int = 0) -> dict[str, Any]:
    at = datetime(2026, 12, 5, 1, minutes, tzinfo=UTC)
    return {"id": fid, "job": job, "watch": "drone", "folder": fid, "files": files, "partial": partial,
            "reason": "max_wait" if partial else "quiet", "closed_at": at.isoformat()}


def _at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=SEOUL)


def test_no_uploads_waits_for_the_deadline_then_fires_once_a_day_and_the_first_file_resolves_it() -> None:
    st = ExpectState()
    empty = {"2026-12-05": {"drone": _day()}}
    assert judge_day(WATCH, st, empty, _at(5, 9, 59)) is None, "before 10:00 nothing is late"
    fired = judge_day(WATCH, st, empty, _at(5, 10, 0))
    assert fired is not None and fired.kind == "no_uploads" and not fired.resolved
    assert fired.details == {"watch": "drone", "by": "10:00", "day": "2026-12-05", "seen": 0, "expected": 1}
    assert judge_day(WATCH, st, empty, _at(5, 15)) is None, "raised once for the day"
    one_file = {"2026-12-05": {"drone": _day(files=1, unbatched=1)}}
    done = judge_day(WATCH, st, one_file, _at(5, 15, 1))
    assert done is not None and done.resolved and done.group_key() == fired.group_key()
    assert st.no_uploads == {} and judge_day(WATCH, st, one_file, _at(5, 16)) is None


def test_a_day_still_empty_after_yesterdays_alarm_raises_again_with_its_own_id() -> None:
    st = ExpectState()
    first = judge_day(WATCH, st, {"2026-12-04": {"drone": _day()}}, _at(4, 11))
    nothing = {"2026-12-04": {"drone": _day()}, "2026-12-05": {"drone": _day()}}
    assert judge_day(WATCH, st, nothing, _at(5, 9)) is None, "today's deadline has not come yet"
    second = judge_day(WATCH, st, nothing, _at(5, 10, 30))
    assert first is not None and second is not None and first.id != second.id
    assert st.no_uploads == {"watch:drone": "2026-12-05"}


def test_flights_per_day_counts_closed_flights_and_one_open_one() -> None:
    st = ExpectState()
    one_closed_one_open = {"2026-12-05": {"drone": _day(files=300, unbatched=20, flights=[_flight("a", 280)])}}
    assert judge_day(TWO, st, one_closed_one_open, _at(5, 11)) is None
    other_jobs = {"2026-12-05": {"drone": _day(files=300, flights=[_flight("a", 280, job="other")])}}
    fired = judge_day(TWO, st, other_jobs, _at(5, 11))
    assert fired is not None and fired.details["seen"] == 0, "another job's flight is not this job's"


def test_incomplete_flights_are_short_or_partial_judged_once_and_a_complete_one_resolves() -> None:
    st = ExpectState()
    now = datetime(2026, 12, 5, 2, tzinfo=UTC)
    window = now - timedelta(days=3)
    got = {"drone": _day(flights=[_flight("full", 300, minutes=1), _flight("short", 180, minutes=2),
                                  _flight("cut", 260, partial=True, minutes=3)])}
    alerts = judge_flights([TWO], st, got, window, now)
    assert [(a.id, a.resolved) for a in alerts] == [("incomplete_flight.short", False),
                                                    ("incomplete_flight.cut", False)]
    assert alerts[0].details["files"] == 180 and alerts[0].details["min_files"] == 250
    assert judge_flights([TWO], st, got, window, now) == [], "each flight is judged once"
    got["drone"]["flights"].append(_flight("next", 251, minutes=4))
    resolved = judge_flights([TWO], st, got, window, now)
    assert [(a.kind, a.resolved) for a in resolved] == [("incomplete_flight", True)]


def test_flights_of_a_job_without_expect_are_not_judged() -> None:
    st = ExpectState()
    now = datetime(2026, 12, 5, 2, tzinfo=UTC)
    got = {"drone": _day(flights=[_flight("short", 3, job="someone_else")])}
    assert judge_flights([TWO], st, got, now - timedelta(days=3), now) == []


@pytest.mark.parametrize(("raw", "words"), [
    ({"folder_watches": [{"name": "drone", "path": "/srv", "expect": {"by": "10:00", "min_files": 250}}]},
     "watch 'drone': field 'expect.min_files': needs a job with on_batch"),
    ({"folder_watches": [{"name": "drone", "path": "/srv", "expect": {"by": "25:00"}}]},
     "expected a time of day like '10:00'"),
    ({"folder_watches": [{"name": "drone", "path": "/srv"}],
      "jobs": [{"name": "mosaic", "type": "batch_detection", "run": ["true"],
                "on_batch": {"watch": "nowhere", "expect": {"by": "10:00", "min_files": 250}}}]},
     "job 'mosaic': field 'on_batch.watch': unknown watch 'nowhere'; known: drone"),
])
def test_expect_config_problems_are_named(raw: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert words in str(info.value)


def test_expect_on_a_batched_watch_and_on_batch_is_accepted() -> None:
    config = parse_config({
        "folder_watches": [{"name": "drone", "path": "/srv", "expect": {"by": "9:30", "flights_per_day": 2}}],
        "jobs": [{"name": "mosaic", "type": "batch_detection", "run": ["true"],
                  "on_batch": {"watch": "drone", "expect": {"by": "10:00", "min_files": 250}}}]})
    assert config.folder_watches[0].expect == Expectation(by="9:30", flights_per_day=2)
    assert config.jobs[0].on_batch is not None and config.jobs[0].on_batch.expect is not None
