"""plan_catchup: which missed instants run after downtime and which are recorded as missed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.timer.planner import plan_catchup
from shared.config import Catchup
from shared.schedule import Schedule

T0 = datetime(2026, 5, 1, 0, 0, tzinfo=UTC)
MINUTELY = Schedule(interval=60)


def _m(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


# downtime (T0, T0+10m]: instants at minutes 1..10; window 3m 30s: minutes 7..10 are in it
NOW = _m(10)
WINDOW = 210.0
OLD = [_m(i) for i in range(1, 7)]
RECENT = [_m(i) for i in range(7, 11)]


def test_all_runs_every_instant_in_the_window() -> None:
    plan = plan_catchup(MINUTELY, T0, NOW, Catchup.ALL, WINDOW, 100)
    assert plan.run == RECENT
    assert [t for t, _ in plan.missed] == OLD
    assert all("older than catchup_window (210s)" in reason for _, reason in plan.missed)
    assert plan.overflow is None


def test_latest_runs_only_the_most_recent() -> None:
    plan = plan_catchup(MINUTELY, T0, NOW, Catchup.LATEST, WINDOW, 100)
    assert plan.run == [NOW]
    assert [t for t, _ in plan.missed] == OLD + RECENT[:-1]
    reasons = dict(plan.missed)
    assert all("older than catchup_window" in reasons[t] for t in OLD)
    for t in RECENT[:-1]:
        assert "catchup=latest" in reasons[t] and NOW.isoformat() in reasons[t]


def test_skip_runs_nothing() -> None:
    plan = plan_catchup(MINUTELY, T0, NOW, Catchup.SKIP, WINDOW, 100)
    assert plan.run == []
    assert [t for t, _ in plan.missed] == OLD + RECENT
    reasons = dict(plan.missed)
    assert all("catchup=skip" in reasons[t] for t in RECENT)
    assert all("older than catchup_window" in reasons[t] for t in OLD)


@pytest.mark.parametrize("policy", list(Catchup))
def test_everything_outside_the_window(policy: Catchup) -> None:
    plan = plan_catchup(MINUTELY, T0, NOW + timedelta(seconds=45), policy, 30.0, 100)
    assert plan.run == []
    assert [t for t, _ in plan.missed] == [_m(i) for i in range(1, 11)]


@pytest.mark.parametrize("policy", list(Catchup))
def test_nothing_missed(policy: Catchup) -> None:
    plan = plan_catchup(MINUTELY, T0, T0 + timedelta(seconds=59), policy, WINDOW, 100)
    assert plan.run == [] and plan.missed == [] and plan.overflow is None


def test_window_boundary_is_inclusive_and_after_is_exclusive() -> None:
    # horizon = now - 180s = minute 7 exactly: minute 7 is in the window
    plan = plan_catchup(MINUTELY, _m(1), NOW, Catchup.ALL, 180.0, 100)
    assert plan.run == RECENT
    assert [t for t, _ in plan.missed] == [_m(i) for i in range(2, 7)]  # minute 1 == after: excluded


def test_overflow_summary_when_more_than_limit() -> None:
    plan = plan_catchup(MINUTELY, T0, NOW, Catchup.ALL, WINDOW, 3)
    # only the newest 3 are enumerated; the 7 before are one summary: (count, first, last)
    assert plan.overflow == (7, _m(1), _m(7))
    assert plan.run == [_m(8), _m(9), _m(10)]
    assert plan.missed == []


def test_overflow_with_old_instants_still_listed() -> None:
    plan = plan_catchup(MINUTELY, T0, NOW, Catchup.LATEST, 90.0, 5)
    assert plan.overflow == (5, _m(1), _m(5))
    assert plan.run == [_m(10)]
    assert [t for t, _ in plan.missed] == [_m(6), _m(7), _m(8), _m(9)]


def test_cron_schedule_in_a_zone() -> None:
    nightly = Schedule(cron="0 2 * * *", tz=ZoneInfo("Asia/Seoul"))
    now = datetime(2026, 5, 10, 12, tzinfo=UTC)
    plan = plan_catchup(nightly, now - timedelta(days=3), now, Catchup.LATEST, 12 * 3600, 1000)
    seoul_2am = [datetime(2026, 5, d, 2, tzinfo=ZoneInfo("Asia/Seoul")) for d in (8, 9, 10)]
    # 02:00 Seoul on the 10th is 17:00 UTC on the 9th: 19 h ago, outside a 12 h window
    assert plan.run == []
    assert [t for t, _ in plan.missed] == seoul_2am


def test_large_downtime_is_bounded() -> None:
    # a year of a 1-minute interval: 525,600 instants, only `limit` of them listed
    now = T0 + timedelta(days=365)
    plan = plan_catchup(MINUTELY, T0, now, Catchup.ALL, 3600, 1000)
    assert plan.overflow is not None and plan.overflow[0] == 525_600 - 1000
    assert len(plan.run) == 61 and len(plan.missed) == 1000 - 61


@given(
    interval=st.integers(1, 7200),
    downtime=st.integers(0, 3 * 86400),
    offset=st.integers(0, 10**6),
    window=st.integers(0, 86400),
    limit=st.integers(1, 300),
    policy=st.sampled_from(list(Catchup)),
)
@settings(max_examples=150, deadline=None)
def test_every_instant_is_run_or_missed_exactly_once(
    interval: int, downtime: int, offset: int, window: int, limit: int, policy: Catchup
) -> None:
    schedule = Schedule(interval=interval)
    after = T0 + timedelta(seconds=offset, microseconds=offset % 1000)
    now = after + timedelta(seconds=downtime)
    if (downtime // interval) > 20_000:
        return
    expected = list(schedule.between(after, now, 10**6))
    plan = plan_catchup(schedule, after, now, policy, window, limit)

    missed = [t for t, _ in plan.missed]
    assert plan.run == sorted(plan.run) and missed == sorted(missed)
    listed = sorted(plan.run + missed)
    assert len(listed) == len(set(listed)), "an instant is both run and missed, or listed twice"
    summarised = []
    if plan.overflow is not None:
        count, first, last = plan.overflow
        summarised = [t for t in expected if first <= t <= last]
        assert len(summarised) == count > 0
        assert first == expected[0]
        assert not set(summarised) & set(listed), "a summarised instant is also listed"
    # every instant in (after, now] exactly once, listed or summarised
    assert sorted(listed + summarised) == expected
    assert len(listed) == min(len(expected), limit)

    horizon = now - timedelta(seconds=window)
    in_window = [t for t in listed if t >= horizon]
    reasons = dict(plan.missed)
    for t in listed:
        if t < horizon:
            assert t in reasons and "older than catchup_window" in reasons[t]
    if policy is Catchup.ALL:
        assert plan.run == in_window
    elif policy is Catchup.LATEST:
        assert plan.run == in_window[-1:]
        assert all("catchup=latest" in reasons[t] for t in in_window[:-1])
    else:
        assert plan.run == []
        assert all("catchup=skip" in reasons[t] for t in in_window)
    assert all(after < t <= now for t in plan.run)


# -- cron schedules: the planner enumerates backwards (Schedule.latest); it must agree with the
# forward sequence (Schedule.between), DST transitions included --------------------------------------

BERLIN = ZoneInfo("Europe/Berlin")


def _check_partition(schedule_factory: Any, after: datetime, now: datetime, policy: Catchup, window: float,
                     limit: int) -> None:
    expected = list(schedule_factory().between(after, now, 10**6))
    plan = plan_catchup(schedule_factory(), after, now, policy, window, limit)
    listed = sorted(plan.run + [t for t, _ in plan.missed])
    assert len(listed) == len(set(listed))
    summarised: list[datetime] = []
    if plan.overflow is not None:
        count, first, last = plan.overflow
        summarised = [t for t in expected if first <= t <= last]
        assert count is None or count == len(summarised)
    assert sorted(listed + summarised) == expected


def test_cron_overflow_summary() -> None:
    every_minute = Schedule(cron="* * * * *", tz=BERLIN)
    now = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
    plan = plan_catchup(every_minute, now - timedelta(hours=2), now, Catchup.ALL, 600, 30)
    assert plan.run == [datetime(2026, 5, 1, 11, m, tzinfo=UTC) for m in range(51, 60)] + [
        datetime(2026, 5, 1, 12, 0, tzinfo=UTC)]
    assert len(plan.missed) == 20
    assert plan.overflow is not None
    count, first, last = plan.overflow
    assert first == datetime(2026, 5, 1, 10, 1, tzinfo=UTC) and last == datetime(2026, 5, 1, 11, 30, tzinfo=UTC)
    assert count in (None, 90)


@pytest.mark.parametrize(("expr", "after", "now"), [
    ("30 2 * * *", datetime(2025, 3, 29, tzinfo=UTC), datetime(2025, 3, 30, 3, tzinfo=UTC)),  # spring
    ("*/15 * * * *", datetime(2025, 10, 25, 23, tzinfo=UTC), datetime(2025, 10, 26, 3, tzinfo=UTC)),  # fall
    ("0 * * * *", datetime(2025, 3, 29, 23, tzinfo=UTC), datetime(2025, 3, 30, 3, tzinfo=UTC)),
    ("30 2 * * *", datetime(2025, 10, 24, tzinfo=UTC), datetime(2025, 10, 27, tzinfo=UTC)),
])
@pytest.mark.parametrize("policy", list(Catchup))
def test_cron_across_dst(expr: str, after: datetime, now: datetime, policy: Catchup) -> None:
    _check_partition(lambda: Schedule(cron=expr, tz=BERLIN), after, now, policy, 3 * 3600, 1000)
    _check_partition(lambda: Schedule(cron=expr, tz=BERLIN), after, now, policy, 3 * 3600, 2)


@pytest.mark.parametrize("policy", list(Catchup))
def test_fall_back_instant_is_not_lost_when_now_is_in_the_repeated_hour(policy: Catchup) -> None:
    # Berlin 2025-10-26: 03:00 CEST -> 02:00 CET. "30 2 * * *" fires once, at 02:30 CEST (00:30 UTC).
    # The timer was down from 00:00 UTC and restarts at 02:10 CET (01:10 UTC): the 00:30 UTC instant
    # must be run or recorded missed. Actual: the plan is empty -- the instant is silently lost.
    schedule = Schedule(cron="30 2 * * *", tz=BERLIN)
    after, now = datetime(2025, 10, 26, 0, 0, tzinfo=UTC), datetime(2025, 10, 26, 1, 10, tzinfo=UTC)
    assert list(Schedule(cron="30 2 * * *", tz=BERLIN).between(after, now, 10)) == [
        datetime(2025, 10, 26, 0, 30, tzinfo=UTC)]
    plan = plan_catchup(schedule, after, now, policy, 3 * 3600, 1000)
    assert plan.run + [t for t, _ in plan.missed] == [datetime(2025, 10, 26, 0, 30, tzinfo=UTC)]


ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Seoul", "UTC"]
CRONS = ["* * * * *", "*/15 * * * *", "0 * * * *", "*/10 1-3 * * *", "0 6 * * *", "30 2 * * *", "0 3 * * 0",
         "15,45 * * * 1-5", "*/20 * * * * *"]


@given(
    expr=st.sampled_from(CRONS),
    zone=st.sampled_from(ZONES),
    after=st.datetimes(datetime(2024, 1, 1), datetime(2027, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
    downtime=st.integers(0, 2 * 86400),
    window=st.integers(0, 86400),
    limit=st.integers(1, 200),
    policy=st.sampled_from(list(Catchup)),
)
@settings(max_examples=150, deadline=None)
def test_cron_every_instant_is_run_or_missed_exactly_once(
    expr: str, zone: str, after: datetime, downtime: int, window: int, limit: int, policy: Catchup
) -> None:
    tz = ZoneInfo(zone)
    now = after + timedelta(seconds=downtime)
    if expr.count(" ") == 5:
        now = after + timedelta(seconds=downtime % 7200)  # per-second schedules: keep it short
    _check_partition(lambda: Schedule(cron=expr, tz=tz), after, now, policy, window, limit)
