"""Sun-aware schedules (shared/sun_schedule.py) against astral itself, for three farms across a
year: a Korean farm (36.5N, no DST), Tromsø (69.65N: polar night and midnight sun, DST) and
Canterbury, New Zealand (43.5S, DST in the southern summer). Plus the edge rules: DST change days,
days without the event (one marker, the day's solar noon, with the reason), catch-up, config."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from astral import Observer
from astral import sun as astral_sun

from services.timer.planner import plan_catchup
from shared.config import Catchup, ConfigError, parse_config, to_specs
from shared.i18n import translator
from shared.job_schedule import describe_when, schedule_of
from shared.sun_config import Location, SunRule
from shared.sun_schedule import SunSchedule, whole_second

YEAR = 2026
FARMS = {
    "korea": (Location(latitude=36.5, longitude=127.5), "Asia/Seoul"),
    "tromso": (Location(latitude=69.65, longitude=18.96), "Europe/Oslo"),
    "canterbury": (Location(latitude=-43.5, longitude=172.6), "Pacific/Auckland"),
}
ASTRAL_EVENT = {
    "sunrise": lambda o, d, tz: astral_sun.sunrise(o, d, tzinfo=tz),
    "sunset": lambda o, d, tz: astral_sun.sunset(o, d, tzinfo=tz),
    "dawn": lambda o, d, tz: astral_sun.dawn(o, d, tzinfo=tz),
    "dusk": lambda o, d, tz: astral_sun.dusk(o, d, tzinfo=tz),
}


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz).astimezone(UTC)


def _year_of(schedule: SunSchedule) -> list[tuple[datetime, str | None]]:
    start = _local_midnight(date(YEAR, 1, 1), schedule.tz) - timedelta(microseconds=1)
    end = _local_midnight(date(YEAR + 1, 1, 1), schedule.tz)
    return [(t, schedule.no_run_reason(t)) for t in schedule.between(start, end, 100_000)]


@pytest.mark.parametrize("farm", sorted(FARMS))
@pytest.mark.parametrize("event", ["sunrise", "sunset", "noon", "dawn", "dusk"])
def test_at_event_every_day_of_a_year_matches_astral(farm: str, event: str) -> None:
    """One instant per local date: astral's event + the offset, or, when astral finds none that
    day, that day's solar noon with the reason."""
    location, zone = FARMS[farm]
    tz = ZoneInfo(zone)
    observer = Observer(latitude=location.latitude, longitude=location.longitude)
    offset = timedelta(minutes=30)
    schedule = SunSchedule(SunRule(at=event, offset="+30m"), location, tz)  # type: ignore[arg-type]
    expected: list[tuple[datetime, str | None]] = []
    day = date(YEAR, 1, 1)
    while day.year == YEAR:
        if event == "noon":
            noon = astral_sun.noon(observer, day, tzinfo=tz)
            assert noon.date() == day  # all three zones are near their meridian
            expected.append((whole_second(noon.astimezone(UTC) + offset), None))
        else:
            try:
                expected.append((whole_second(ASTRAL_EVENT[event](observer, day, tz).astimezone(UTC) + offset), None))
            except ValueError:
                expected.append((schedule.local_noon(day), f"no {event} at {location.label()} on {day}"))
        day += timedelta(days=1)
    got = _year_of(schedule)
    assert [t for t, _ in got] == [t for t, _ in expected]
    for (t, reason), (_, want) in zip(got, expected, strict=True):
        assert (reason is None) == (want is None), (t, reason, want)
        if want is not None:
            assert reason is not None and reason.startswith(want), (reason, want)
            # the marker is that day's solar noon, on that local date
            assert t.astimezone(tz).date().isoformat() in want
    misses = sum(1 for _, r in got if r)
    if farm == "tromso" and event in ("sunrise", "sunset"):
        assert 100 <= misses <= 130, misses  # polar night (below) and midnight sun (above): no sunrise, no sunset
    if farm != "tromso":
        assert misses == 0


@pytest.mark.parametrize(("farm", "threshold", "every"), [("korea", 25.0, 1800.0), ("tromso", 5.0, 1800.0),
                                                          ("canterbury", 25.0, 600.0), ("tromso", -3.0, 3600.0)])
def test_elevation_window_every_7th_day_of_a_year_matches_astral(farm: str, threshold: float, every: float) -> None:
    """On the grid, an instant runs exactly when astral puts the sun above the threshold; the
    window's edges agree with astral's time_at_elevation; a day with no window has one marker at
    its solar noon, and astral's noon elevation is at or below the threshold."""
    location, zone = FARMS[farm]
    schedule = SunSchedule(SunRule(every=every, elevation_above=threshold), location, ZoneInfo(zone))
    observer = schedule.observer
    no_window = crossings = 0
    for ordinal in range(date(YEAR, 1, 1).toordinal(), date(YEAR, 12, 31).toordinal() + 1, 7):
        day = schedule.day(ordinal)
        noon = astral_sun.noon(observer, date.fromordinal(ordinal))
        lo = schedule.day(ordinal - 1).marker + (day.marker - schedule.day(ordinal - 1).marker) / 2
        hi = day.marker + (schedule.day(ordinal + 1).marker - day.marker) / 2
        assert day.marker == noon
        grid = [datetime.fromtimestamp(k * every, UTC)
                for k in range(int(lo.timestamp() // every) + 1, int(hi.timestamp() // every) + 1)]
        grid = [t for t in grid if lo <= t < hi]
        runs = set(schedule.between(lo - timedelta(microseconds=1), hi - timedelta(microseconds=1), 10_000))
        if day.reason is not None:
            no_window += 1
            assert runs == {day.marker} and schedule.no_run_reason(day.marker) == day.reason
            assert astral_sun.elevation(observer, noon) <= threshold + 0.05 or "between two instants" in day.reason
            continue
        for t in grid:
            high = astral_sun.elevation(observer, t) > threshold
            assert (t in runs) == high, (t, astral_sun.elevation(observer, t))
        assert runs <= set(grid)
        assert day.first is not None and day.last is not None
        if day.first > lo:  # the sun rises through the threshold this day: where astral says
            rising = _nearest(day.first, noon, [_at_elevation(observer, threshold, d, True) for d in _around(ordinal)])
            if rising is not None:
                crossings += 1
                assert abs(rising - day.first) < timedelta(seconds=30), (rising, day.first)
        if day.last < hi - timedelta(microseconds=1):
            setting = _nearest(day.last, noon, [_at_elevation(observer, threshold, d, False) for d in _around(ordinal)])
            if setting is not None:
                crossings += 1
                assert abs(setting - day.last) < timedelta(seconds=30), (setting, day.last)
    if threshold > 0:
        assert crossings > 40  # most days' edges were compared with time_at_elevation
    if farm == "tromso" and threshold > 0:
        assert no_window >= 8  # the dark months
    elif farm == "canterbury":
        assert 3 <= no_window <= 10  # at 43.5S the June noon sun stays below 25 degrees
    elif farm == "korea":
        assert no_window == 0


def _around(ordinal: int) -> list[date]:
    return [date.fromordinal(ordinal + k) for k in (-1, 0, 1)]


def _at_elevation(observer: Observer, threshold: float, day: date, rising: bool) -> datetime | None:
    direction = astral_sun.SunDirection.RISING if rising else astral_sun.SunDirection.SETTING
    try:
        return astral_sun.time_at_elevation(observer, threshold, day, direction)
    except ValueError:
        return None


def _nearest(t: datetime, noon: datetime, candidates: list[datetime | None]) -> datetime | None:
    """astral's crossing of this solar day, if it gives one: it dates a crossing by the UTC date it
    computes for, and near 00:00 UTC (Korea, New Zealand) it wraps a crossing to the end of that
    date, computed with the wrong day's sun (minutes off); those are not this day's."""
    found = [c for c in candidates if c is not None and abs(c - noon) < timedelta(hours=12)]
    return min(found, key=lambda c: abs(c - t)) if found else None


def test_midnight_sun_window_runs_through_local_midnight() -> None:
    """Tromsø at midsummer, threshold 0°: the sun never sets, so the grid runs around the clock,
    each instant once, no day boundary dropping or repeating one."""
    location, zone = FARMS["tromso"]
    schedule = SunSchedule(SunRule(every=3600, elevation_above=0), location, ZoneInfo(zone))
    start = datetime(YEAR, 6, 20, tzinfo=UTC)
    got = list(schedule.between(start, start + timedelta(days=3), 1000))
    assert got == [start + timedelta(hours=h) for h in range(1, 73)]
    assert all(schedule.no_run_reason(t) is None for t in got)


def test_polar_reasons_and_next_run_after_the_polar_night() -> None:
    svalbard = Location(latitude=78.2, longitude=15.6)
    tz = ZoneInfo("Arctic/Longyearbyen")
    sunrise = SunSchedule(SunRule(at="sunrise"), svalbard, tz)
    dec21 = sunrise.next_after(_local_midnight(date(YEAR, 12, 21), tz))
    assert dec21 is not None
    assert sunrise.no_run_reason(dec21) == ("no sunrise at 78.2N 15.6E on 2026-12-21: the sun stays below the "
                                            "horizon all day")
    assert dec21 == sunrise.local_noon(date(YEAR, 12, 21))
    # people see the next day that runs: astral's first sunrise after the polar night
    first = sunrise.next_run_after(dec21)
    assert first is not None and first.astimezone(tz).date() > date(YEAR + 1, 2, 1)
    assert first == whole_second(astral_sun.sunrise(sunrise.observer, first.astimezone(tz).date(), tzinfo=tz))
    sunset = SunSchedule(SunRule(at="sunset"), svalbard, tz)
    jun21 = sunset.next_after(_local_midnight(date(YEAR, 6, 21), tz))
    assert jun21 is not None and sunset.no_run_reason(jun21) == (
        "no sunset at 78.2N 15.6E on 2026-06-21: the sun stays above the horizon all day")
    high = SunSchedule(SunRule(every=1800, elevation_above=10), svalbard, tz)
    marker = high.next_after(_local_midnight(date(YEAR, 12, 21), tz))
    assert marker is not None and high.no_run_reason(marker) is not None
    assert high.no_run_reason(marker).startswith(  # type: ignore[union-attr]
        "the sun never gets above 10° at 78.2N 15.6E on 2026-12-21 (highest -")
    # one marker per day, not one per grid instant
    week = list(high.between(marker - timedelta(microseconds=1), marker + timedelta(days=7), 1000))
    assert len(week) == 7 and all(high.no_run_reason(t) for t in week)


@pytest.mark.parametrize(("day", "zone"), [(date(2026, 3, 29), "Europe/Berlin"), (date(2026, 10, 25), "Europe/Berlin"),
                                           (date(2026, 4, 5), "Pacific/Auckland"),
                                           (date(2026, 9, 27), "Pacific/Auckland")])
@pytest.mark.parametrize("event", ["sunrise", "sunset", "dawn", "dusk"])
def test_dst_change_days_one_run_each_at_astrals_time(day: date, zone: str, event: str) -> None:
    tz = ZoneInfo(zone)
    place = Location(latitude=52.52, longitude=13.4) if zone == "Europe/Berlin" else FARMS["canterbury"][0]
    schedule = SunSchedule(SunRule(at=event, offset="-1h"), place, tz)  # type: ignore[arg-type]
    days = [day + timedelta(days=k) for k in (-1, 0, 1)]
    got = list(schedule.between(_local_midnight(days[0], tz) - timedelta(hours=2),
                                _local_midnight(days[-1] + timedelta(days=1), tz) - timedelta(hours=2), 10))
    want = [whole_second(ASTRAL_EVENT[event](schedule.observer, d, tz).astimezone(UTC) - timedelta(hours=1)) for d in days]
    assert got == want
    # the offset is real time: one hour before the event, whatever the clocks did that night
    assert [g.astimezone(tz).date() for g in got] == days


def test_catch_up_records_no_event_days_with_their_reason_whatever_the_policy() -> None:
    location, zone = FARMS["tromso"]
    schedule = SunSchedule(SunRule(at="sunrise", offset="+30m"), location, ZoneInfo(zone))
    after, now = datetime(YEAR, 11, 20, tzinfo=UTC), datetime(YEAR, 12, 3, tzinfo=UTC)
    for policy in Catchup:
        plan = plan_catchup(schedule, after, now, policy, 30 * 86400.0, 1000)
        reasons = dict(plan.missed)
        polar = [t for t, r in plan.missed if r.startswith("no sunrise")]
        assert len(polar) == len({t.date() for t in polar}) >= 5  # one per day
        assert all(t not in reasons for t in plan.run)
        assert all(schedule.no_run_reason(t) is None for t in plan.run)
        ran_or_missed = sorted([*plan.run, *reasons])
        assert ran_or_missed == list(schedule.between(after, now, 100))
        if policy is Catchup.ALL:
            assert len(plan.run) == len(ran_or_missed) - len(polar)


def test_latest_walks_back_over_days() -> None:
    location, zone = FARMS["korea"]
    schedule = SunSchedule(SunRule(every=600, elevation_above=25), location, ZoneInfo(zone))
    start, end = datetime(YEAR, 5, 1, tzinfo=UTC), datetime(YEAR, 5, 4, tzinfo=UTC)
    every = list(schedule.between(start, end, 10_000))
    assert schedule.latest(start, end, 5) == every[-5:]
    assert schedule.latest(start, end, 10_000) == every
    assert schedule.count(start, end) is None
    # a 1 s grid: the most recent thousand of a day's tens of thousands, without listing them all
    fine = SunSchedule(SunRule(every=1, elevation_above=25), location, ZoneInfo(zone))
    recent = fine.latest(start, end, 1000)
    assert len(recent) == 1000 and recent[-1] == fine.latest(start, end, 1)[0]
    assert all(b - a == timedelta(seconds=1) for a, b in zip(recent, recent[1:], strict=False))
    assert fine.next_after(recent[-1]) is not None and fine.next_after(recent[-1]) > end  # type: ignore[operator]


# -- config --------------------------------------------------------------------------------------
SUN_FARM: dict[str, Any] = {
    "system": {"timezone": "Asia/Seoul", "location": {"latitude": 36.5, "longitude": 127.5}},
    "jobs": [{"name": "dawn_flight", "type": "image_processing", "sun": {"at": "sunrise", "offset": "+30m"},
              "call": "tests.jobs.calls:noop"},
             {"name": "high_sun", "type": "image_processing", "sun": {"every": "30m", "elevation_above": 25},
              "call": "tests.jobs.calls:noop"}],
}


def _problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


def _with(system: dict[str, Any] | None = None, **sun: Any) -> dict[str, Any]:
    return {"system": system if system is not None else SUN_FARM["system"],
            "jobs": [{"name": "flight", "type": "image_processing", "sun": sun, "call": "a.b:c"}]}


def test_config_sun_jobs_resolve_to_sun_schedules_with_words() -> None:
    config = parse_config(SUN_FARM)
    specs = to_specs(config, Path("."), {})
    dawn, high = specs["dawn_flight"], specs["high_sun"]
    assert dawn.location == Location(latitude=36.5, longitude=127.5)
    assert isinstance(schedule_of(dawn), SunSchedule) and isinstance(schedule_of(high), SunSchedule)
    assert describe_when(dawn) == "at sunrise +30m"
    assert describe_when(high) == "every 30m while the sun is above 25°"
    assert describe_when(dawn, _=translator("ko")) == "일출 +30m"
    assert describe_when(high, _=translator("ko")) == "해가 25° 위에 있는 동안 30m마다"
    # moving the farm's pin is a schedule change for sun jobs (defined_at resets), for them only
    moved = {**SUN_FARM, "system": {**SUN_FARM["system"], "location": {"latitude": 36.6, "longitude": 127.5}}}
    later = to_specs(parse_config(moved), Path("."), specs, now=dawn.defined_at + timedelta(days=1))
    assert later["dawn_flight"].defined_at > dawn.defined_at
    same = to_specs(parse_config(SUN_FARM), Path("."), specs, now=dawn.defined_at + timedelta(days=1))
    assert same["dawn_flight"].defined_at == dawn.defined_at


@pytest.mark.parametrize(("raw", "expected"), [
    (_with({"timezone": "UTC"}, at="sunrise"), "job 'flight': field 'sun': a sun: schedule needs the farm's location"),
    (_with({"location": {"latitude": 91, "longitude": 10}}, at="sunrise"),
     "field 'system.location.latitude': Input should be less than or equal to 90"),
    (_with({"location": {"latitude": 36.5, "longitude": "127.5E"}}, at="sunrise"),
     "field 'system.location.longitude': must be a number of decimal degrees"),
    (_with({"location": {"latitude": 69.6, "longitude": 19}}, every="30m", elevation_above=50),
     "job 'flight': field 'sun': the sun never gets above 50° at latitude 69.6 on any day of the year "
     "(at most 43.8°)"),
    (_with(at="sunrise", every="30m", elevation_above=5), "job 'flight': field 'sun': give either `at`"),
    (_with(at="moonrise"), "job 'flight': field 'sun.at': Input should be 'sunrise', 'sunset', 'noon', 'dawn' or 'dusk'"),
    (_with(at="sunset", offset="+13h"), "job 'flight': field 'sun.offset': offset must be within 12h of the event"),
    (_with(at="sunset", offset="soon"), "job 'flight': field 'sun.offset': expected a duration like"),
    (_with(every="30m"), "job 'flight': field 'sun': `every` and `elevation_above` go together"),
    (_with(every="30m", elevation_above=20, offset="+5m"), "job 'flight': field 'sun': `offset` goes with `at`"),
    (_with(), "job 'flight': field 'sun': give `at: sunrise|sunset|noon|dawn|dusk`"),
])
def test_config_bad_sun_input_is_named(raw: dict[str, Any], expected: str) -> None:
    problems = _problems(raw)
    assert any(p.startswith(expected) for p in problems), problems
    assert len(problems) == 1, problems


def test_config_sun_is_exclusive_with_other_whens() -> None:
    raw = _with(at="noon")
    raw["jobs"][0]["schedule"] = "0 6 * * *"
    assert _problems(raw) == ["job 'flight': definition: give only one of schedule, interval, run_at, sun, on_file, "
                              "on_batch (got schedule, sun)"]
