"""When a job fires: cron (in the job's time zone), fixed interval, or one shot.

Instants are aware UTC datetimes. Cron is evaluated by cronsim, which follows Debian cron's
DST behaviour (a time skipped by spring-forward fires once just after the change; a time
repeated by fall-back fires once) -- see docs/config.md. croniter is not used for
evaluation: it has open DST bugs (RELIABILITY.md §6).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

# cronsim gives up after this horizon; we use it to reject schedules that never fire.
NEVER_HORIZON_YEARS = 50


class ScheduleError(ValueError):
    pass


def validate_cron(expr: str, tz: ZoneInfo) -> None:
    fields = expr.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(
            f"cron expression {expr!r} has {len(fields)} fields; expected 5 (min hour dom month dow) "
            "or 6 (sec min hour dom month dow)"
        )
    try:
        it = CronSim(expr, datetime.now(tz))
    except CronSimError as exc:
        # cronsim rejects e.g. "0 0 31 2 *" as a bad day-of-month; say what that means.
        if _parses_with_any_month(fields):
            raise ScheduleError(
                f"cron expression {expr!r} never fires: that day of month never occurs in the given months"
            ) from exc
        raise ScheduleError(f"invalid cron expression {expr!r}: {exc}") from exc
    try:
        next(it)
    except (StopIteration, CronSimError) as exc:
        raise ScheduleError(
            f"cron expression {expr!r} never fires (no match within {NEVER_HORIZON_YEARS} years)"
        ) from exc


def _parses_with_any_month(fields: list[str]) -> bool:
    month_index = len(fields) - 2
    relaxed = [*fields[:month_index], "*", fields[-1]]
    try:
        CronSim(" ".join(relaxed), datetime.now(UTC))
    except CronSimError:
        return False
    return True


@dataclass
class Schedule:
    """A job's firing rule. `next_after(t)` is the first instant strictly after t."""

    cron: str | None = None
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    interval: float | None = None  # seconds; instants are anchor + k*interval
    anchor: datetime = datetime(1970, 1, 1, tzinfo=UTC)
    run_at: datetime | None = None
    # Cached cron iterator: stepping an existing CronSim is ~2x cheaper than building one
    # (DESIGN.md, croniter figures), and the timer asks for consecutive instants.
    _it: CronSim | None = field(default=None, repr=False)
    _last: datetime | None = field(default=None, repr=False)

    def signature(self) -> tuple[object, ...]:
        """Equal for two schedules that fire the same instants (the timer keeps a job's place then)."""
        return (self.cron, str(self.tz), self.interval, self.run_at)

    def no_run_reason(self, instant: datetime) -> str | None:
        """Why an instant of this schedule is recorded as missed instead of run; None: it runs.
        Only sun schedules have such instants (a day without the event, shared/sun_schedule.py)."""
        return None

    def next_run_after(self, after: datetime) -> datetime | None:
        """The next instant that runs (for people: `cropcron jobs`, the dashboard, the dead-man)."""
        return self.next_after(after)

    def next_after(self, after: datetime) -> datetime | None:
        if self.interval is not None:
            k = math.floor((after - self.anchor).total_seconds() / self.interval) + 1
            candidate = self.anchor + timedelta(seconds=k * self.interval)
            # float rounding can land on `after` itself
            while candidate <= after:
                k += 1
                candidate = self.anchor + timedelta(seconds=k * self.interval)
            return candidate
        if self.run_at is not None:
            return self.run_at if self.run_at > after else None
        if self.cron is not None:
            return self._next_cron(after)
        return None

    def _next_cron(self, after: datetime) -> datetime | None:
        if self._it is None or self._last is None or self._last != after:
            # cronsim starts strictly after the given time (whole seconds)
            start = after.astimezone(self.tz).replace(microsecond=0)
            self._it = CronSim(self.cron or "", start)
        # Step until past `after` itself. Usually once; more when `after` has a fraction of a
        # second, or lies in the second pass of a repeated (fall-back) hour: cronsim reads the
        # local time as its first occurrence and starts an hour early. (This stepped from the
        # first result instead of from `after` and could return an instant before `after`: a
        # timer restarting in a repeated hour got a past instant; found by the restart property.)
        while True:
            try:
                local = next(self._it)
            except (StopIteration, CronSimError):
                return None
            result = local.astimezone(UTC)
            if result > after:
                self._last = result
                return result

    def latest(self, start: datetime, end: datetime, n: int) -> list[datetime]:
        """The (at most) n most recent instants in (start, end], ascending. Walks backwards from
        `end`, so a week-long outage of a per-second job costs n steps, not 600,000."""
        out: list[datetime] = []
        if self.interval is not None:
            k = math.floor((end - self.anchor).total_seconds() / self.interval)
            while len(out) < n:
                t = self.anchor + timedelta(seconds=k * self.interval)
                if t > end:
                    k -= 1
                    continue
                if t <= start:
                    break
                out.append(t)
                k -= 1
        elif self.run_at is not None:
            if start < self.run_at <= end:
                out.append(self.run_at)
        elif self.cron is not None:
            # start 3 h past `end`: inside a repeated (fall-back) hour, local times map to their
            # first occurrence, so starting at `end` itself could step over an instant <= end
            it = CronSim(self.cron, (end + timedelta(hours=3)).astimezone(self.tz).replace(microsecond=0),
                         reverse=True)
            while len(out) < n:
                try:
                    t = next(it).astimezone(UTC)
                except (StopIteration, CronSimError):
                    break
                if t > end:
                    continue
                if t <= start:
                    break
                out.append(t)
        return sorted(out)

    def count(self, start: datetime, end: datetime) -> int | None:
        """How many instants in (start, end], when that is cheap to know (intervals)."""
        if self.interval is None:
            return None
        first = self.next_after(start)
        if first is None or first > end:
            return 0
        return math.floor((end - first).total_seconds() / self.interval + 1e-9) + 1

    def between(self, start: datetime, end: datetime, limit: int) -> Iterator[datetime]:
        """Instants in (start, end], at most `limit` of them."""
        t = start
        for _ in range(limit):
            nxt = self.next_after(t)
            if nxt is None or nxt > end:
                return
            yield nxt
            t = nxt
