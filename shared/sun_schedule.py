"""Sun-aware schedules (issue 14): one run a day at a sun event ± an offset, or runs on an interval
grid while the sun is higher than a threshold, at the farm's location. Pure: astral computes the
sun; this module turns it into instants the timer fires like any other schedule's.

Days. Each day either has runs or has one *marker* instant, that day's solar noon, for which the
timer records one `missed` run with the reason (a polar night has no sunrise; in winter the sun
may never climb above the threshold). So a day without the event is on record once, not per tick.

- `at:` days are the local dates of the job's time zone. The event is astral's for that date
  (astral returns the event that falls on the local date, or raises when there is none); the
  offset is added as real time, so DST changes move nothing but the clock's reading.
- `every:` days are solar days: from the solar midnight before a solar noon to the one after
  (midway between consecutive noons), so a summer window that runs through local midnight is one
  window, and days neither overlap nor leave gaps. Each is named by the local date of its noon.
  The window's edges are where astral's (refracted) elevation crosses the threshold, found by
  bisection to a millisecond; the instants are those of the grid `1970-01-01Z + k * every`
  (the same grid as `interval:`) inside the window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from astral import Observer
from astral import sun as astral_sun

from shared.durations import format_duration
from shared.schedule import Schedule
from shared.sun_config import Location, SunRule

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# How far a search for the next *run* (skipping days without one) looks ahead: longer than any
# polar night (about six months at the pole).
SEARCH_DAYS = 400
# Bisection stops when the crossing is bracketed this tightly.
PRECISION = timedelta(milliseconds=1)
# Per-day results kept by one schedule (the timer asks about the same few days over and over).
CACHE_DAYS = 1024
# For reasons, whether the sun stayed above or below the event's elevation: judged at noon as astral
# judges it (sunrise: its zenith at noon past 90 degrees; civil twilight: 6 degrees below).
EVENT_ELEVATION = {"sunrise": 0.0, "sunset": 0.0, "dawn": -6.0, "dusk": -6.0}
EVENT_WHAT = {"sunrise": "the horizon", "sunset": "the horizon", "dawn": "6° below the horizon",
              "dusk": "6° below the horizon"}


@dataclass(frozen=True)
class Day:
    """One day of a sun schedule: its runs lie in [first, last] (one instant for `at:`; the window
    for `every:`), or, with a reason, nothing runs and `marker` is recorded as missed."""

    label: date
    marker: datetime
    reason: str | None = None
    first: datetime | None = None
    last: datetime | None = None


class SunSchedule(Schedule):
    def __init__(self, rule: SunRule, location: Location, tz: ZoneInfo) -> None:
        super().__init__(tz=tz)
        self.rule = rule
        self.location = location
        self.observer = Observer(latitude=location.latitude, longitude=location.longitude)
        self._days: dict[int, Day] = {}
        self._noons: dict[int, datetime] = {}

    def signature(self) -> tuple[object, ...]:
        return ("sun", self.rule, self.location, str(self.tz))

    # -- the Schedule interface --------------------------------------------------------------
    def next_after(self, after: datetime) -> datetime | None:
        start = self._index(after) - 1
        for i in range(start, start + SEARCH_DAYS):
            found = self._first_after(self.day(i), after)
            if found is not None:
                return found
        return None

    def next_run_after(self, after: datetime) -> datetime | None:
        t: datetime | None = after
        for _ in range(SEARCH_DAYS + 1):
            t = self.next_after(t) if t is not None else None
            if t is None or self.no_run_reason(t) is None:
                return t
        return None

    def no_run_reason(self, instant: datetime) -> str | None:
        near = self._index(instant)
        for i in (near - 1, near, near + 1):
            day = self.day(i)
            if day.reason is not None and day.marker == instant:
                return day.reason
        return None

    def latest(self, start: datetime, end: datetime, n: int) -> list[datetime]:
        out: list[datetime] = []
        i, stop = self._index(end) + 1, self._index(start) - 1
        while len(out) < n and i >= stop:
            out.extend(self._instants_desc(self.day(i), start, end, n - len(out)))
            i -= 1
        return sorted(out)

    def count(self, start: datetime, end: datetime) -> int | None:
        return None  # not cheap: the catch-up summary then says "the instants from ... to ..."

    # -- days ----------------------------------------------------------------------------------
    def day(self, index: int) -> Day:
        """Day `index`: a local date's ordinal for `at:`, a UTC date's ordinal (astral's noon of that
        date) for `every:`."""
        cached = self._days.get(index)
        if cached is None:
            cached = self._at_day(index) if self.rule.at is not None else self._window_day(index)
            if len(self._days) >= CACHE_DAYS:
                self._days.clear()
            self._days[index] = cached
        return cached

    def _index(self, t: datetime) -> int:
        if self.rule.at is not None:
            return t.astimezone(self.tz).date().toordinal()
        return t.astimezone(UTC).date().toordinal()

    def _first_after(self, day: Day, after: datetime) -> datetime | None:
        if day.reason is not None:
            return day.marker if day.marker > after else None
        assert day.first is not None and day.last is not None
        if self.rule.every is None:
            return day.first if day.first > after else None
        t = _grid_at_or_after(max(day.first, after + timedelta(microseconds=1)), self.rule.every)
        return t if t <= day.last else None

    def _instants_desc(self, day: Day, start: datetime, end: datetime, limit: int) -> list[datetime]:
        """The day's instants in (start, end], newest first, at most `limit` (a day of a 1 s grid
        holds tens of thousands; catch-up wants the most recent thousand)."""
        if day.reason is not None:
            return [day.marker] if start < day.marker <= end and limit > 0 else []
        assert day.first is not None and day.last is not None
        if self.rule.every is None:
            return [day.first] if start < day.first <= end and limit > 0 else []
        out: list[datetime] = []
        t = _grid_at_or_before(min(day.last, end), self.rule.every)
        while t >= day.first and t > start and len(out) < limit:
            out.append(t)
            t = _grid_at_or_before(t - timedelta(microseconds=1), self.rule.every)
        return out

    # -- `at:` an event each local date ----------------------------------------------------------
    def _at_day(self, ordinal: int) -> Day:
        on = date.fromordinal(ordinal)
        noon = self.local_noon(on)
        event = self.rule.at or "noon"
        if event == "noon":
            instant = whole_second(noon + timedelta(seconds=self.rule.offset))
            return Day(on, noon, first=instant, last=instant)
        try:
            when = EVENTS[event](self.observer, on, self.tz).astimezone(UTC)
        except ValueError as exc:
            return Day(on, noon, reason=self._no_event(event, on, noon, str(exc)))
        instant = whole_second(when + timedelta(seconds=self.rule.offset))
        return Day(on, noon, first=instant, last=instant)

    def local_noon(self, on: date) -> datetime:
        """Solar noon on the local date `on` (astral's noon is per UTC date: far from the zone's
        meridian it can fall on the neighbouring local date)."""
        for candidate in (on, on - timedelta(days=1), on + timedelta(days=1)):
            noon = astral_sun.noon(self.observer, candidate, tzinfo=self.tz)
            if noon.date() == on:
                return noon.astimezone(UTC)
        return datetime.combine(on, time(12), self.tz).astimezone(UTC)

    def _no_event(self, event: str, on: date, noon: datetime, error: str) -> str:
        where = f"no {event} at {self.location.label()} on {on.isoformat()}"
        if error.startswith("Unable to find"):
            return f"{where}: it falls on the neighbouring day"
        highest = astral_sun.elevation(self.observer, noon)
        side = "below" if highest <= EVENT_ELEVATION[event] else "above"
        return f"{where}: the sun stays {side} {EVENT_WHAT[event]} all day"

    # -- `every:` while the sun is high, per solar day -------------------------------------------
    def _noon(self, ordinal: int) -> datetime:
        noon = self._noons.get(ordinal)
        if noon is None:
            noon = astral_sun.noon(self.observer, date.fromordinal(ordinal)).astimezone(UTC)
            if len(self._noons) >= CACHE_DAYS:
                self._noons.clear()
            self._noons[ordinal] = noon
        return noon

    def _window_day(self, ordinal: int) -> Day:
        assert self.rule.every is not None and self.rule.elevation_above is not None
        threshold, every = self.rule.elevation_above, self.rule.every
        noon = self._noon(ordinal)
        lo = _midway(self._noon(ordinal - 1), noon)  # solar midnights: the day's bounds
        hi = _midway(noon, self._noon(ordinal + 1))
        label = noon.astimezone(self.tz).date()
        highest = self.elevation(noon)
        where = f"at {self.location.label()} on {label.isoformat()}"
        if highest <= threshold:
            return Day(label, noon, reason=f"the sun never gets above {threshold:g}° {where} "
                                           f"(highest {highest:.1f}°)")
        above: Callable[[datetime], bool] = lambda t: self.elevation(t) > threshold  # noqa: E731
        first = lo if above(lo) else _crossing(lo, noon, above)
        # `hi` is the next day's first moment: a window running through it ends just before
        last = hi - timedelta(microseconds=1) if above(hi) else _crossing(hi, noon, above)
        if _grid_at_or_after(first, every) > last:
            local = "%H:%M:%S"
            return Day(label, noon, reason=(
                f"the sun is above {threshold:g}° {where} only from {first.astimezone(self.tz).strftime(local)} "
                f"to {last.astimezone(self.tz).strftime(local)}, between two instants of the "
                f"every-{format_duration(every)} grid"))
        return Day(label, noon, first=first, last=last)

    def elevation(self, t: datetime) -> float:
        return float(astral_sun.elevation(self.observer, t))


EVENTS: dict[str, Callable[[Observer, date, ZoneInfo], datetime]] = {
    "sunrise": lambda o, d, tz: astral_sun.sunrise(o, d, tzinfo=tz),
    "sunset": lambda o, d, tz: astral_sun.sunset(o, d, tzinfo=tz),
    "dawn": lambda o, d, tz: astral_sun.dawn(o, d, depression=6.0, tzinfo=tz),  # civil: 6 degrees below
    "dusk": lambda o, d, tz: astral_sun.dusk(o, d, depression=6.0, tzinfo=tz),
}


def whole_second(t: datetime) -> datetime:
    """Event instants to the nearest second, like every other schedule's: astral's are good to about
    a minute anyway, and run ids and `{scheduled_at}` read better without the microseconds."""
    return (t + timedelta(microseconds=500_000)).replace(microsecond=0)


def _midway(a: datetime, b: datetime) -> datetime:
    """One formula for both neighbours, so one day's end is exactly the next one's start."""
    return a + (b - a) / 2


def _crossing(outside: datetime, inside: datetime, above: Callable[[datetime], bool]) -> datetime:
    """The moment between `outside` (sun not above) and `inside` (above) where it crosses: the
    earliest found moment that is above, to PRECISION."""
    while abs(inside - outside) > PRECISION:
        middle = outside + (inside - outside) / 2
        if above(middle):
            inside = middle
        else:
            outside = middle
    return inside


def _grid_at_or_after(t: datetime, every: float) -> datetime:
    step = timedelta(seconds=every)
    k = -((EPOCH - t) // step)  # ceil, in exact timedelta arithmetic
    return EPOCH + k * step


def _grid_at_or_before(t: datetime, every: float) -> datetime:
    step = timedelta(seconds=every)
    return EPOCH + ((t - EPOCH) // step) * step
