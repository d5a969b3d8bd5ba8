"""Config for sun-aware schedules (issue 14): the farm's `system.location` and a job's `sun:` rule.

A rule is either one run per day at a sun event (`at: sunrise`, with an `offset`), or runs on an
interval grid while the sun is higher than a threshold (`every: 30m, elevation_above: 25`). The
astronomy is in shared/sun_schedule.py; these are only the validated fields."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.durations import Duration, format_duration, parse_duration
from shared.i18n import _

SunEvent = Literal["sunrise", "sunset", "noon", "dawn", "dusk"]
SUN_EVENTS: tuple[str, ...] = ("sunrise", "sunset", "noon", "dawn", "dusk")
# An offset moves the event within reach of its own day; more would make two days' runs swap order.
MAX_OFFSET = 12 * 3600.0
# The sun's greatest declination: at latitude L it never climbs above 90 - max(0, |L| - this).
OBLIQUITY = 23.44


class Location(BaseModel):
    """Where the farm is: decimal degrees, north and east positive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latitude: float = Field(ge=-90.0, le=90.0)
    longitude: float = Field(ge=-180.0, le=180.0)

    @field_validator("latitude", "longitude", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # "36.5N" or a bool would otherwise read as a confusing pydantic message, or as 1.0
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(_("must be a number of decimal degrees (north and east positive), e.g. 36.5"))
        return value

    def label(self) -> str:
        """36.5N 127.5E: how reasons and the CLI name the place."""
        lat = f"{abs(self.latitude):g}{'N' if self.latitude >= 0 else 'S'}"
        lon = f"{abs(self.longitude):g}{'E' if self.longitude >= 0 else 'W'}"
        return f"{lat} {lon}"

    def highest_elevation(self) -> float:
        """The highest the sun ever gets here over a year, in degrees (at noon of a solstice)."""
        return 90.0 - max(0.0, abs(self.latitude) - OBLIQUITY)


def parse_offset(value: Any) -> float:
    """'+30m', '-1h', '90s', 0 -> signed seconds."""
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        seconds = sign * parse_duration(text.lstrip("+-").strip() or "x")
    else:  # a bare number of seconds
        seconds = math.copysign(parse_duration(abs(value)), value)
    if abs(seconds) > MAX_OFFSET:
        raise ValueError(_("offset must be within 12h of the event, got %(offset)s", offset=repr(value)))
    return seconds


def format_offset(seconds: float) -> str:
    return ("-" if seconds < 0 else "+") + format_duration(abs(seconds))


class SunRule(BaseModel):
    """`sun: {at: sunrise, offset: "+30m"}` or `sun: {every: 30m, elevation_above: 25}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    at: SunEvent | None = None
    offset: float = 0.0  # seconds, signed; only with `at`
    every: Duration | None = None
    elevation_above: float | None = Field(None, gt=-90.0, lt=90.0)  # degrees; only with `every`

    @field_validator("offset", mode="before")
    @classmethod
    def _offset(cls, value: Any) -> float:
        if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(_("expected an offset like '+30m' or '-1h', got %(value)s", value=repr(value)))
        return parse_offset(value)

    @field_validator("every")
    @classmethod
    def _every(cls, value: float | None) -> float | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1s")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> SunRule:
        window = self.every is not None or self.elevation_above is not None
        if self.at is not None and window:
            raise ValueError(_("give either `at` (one run per day at a sun event) or `every` with "
                               "`elevation_above` (runs while the sun is high), not both"))
        if self.at is None and not window:
            raise ValueError(_("give `at: sunrise|sunset|noon|dawn|dusk` (with an optional offset such as "
                               "\"+30m\") or `every: 30m` with `elevation_above: 25`"))
        if window and (self.every is None or self.elevation_above is None):
            raise ValueError(_("`every` and `elevation_above` go together: runs every `every` while the sun is "
                               "higher than `elevation_above` degrees"))
        if self.offset and self.at is None:
            raise ValueError(_("`offset` goes with `at` (e.g. at: sunrise, offset: \"+30m\")"))
        return self


def sun_problem(rule: Any, location: Location | None) -> str | None:
    """What is wrong with a valid rule at this farm: no location to compute it for, or a threshold the
    sun never reaches there on any day of the year (a typo more likely than a wish)."""
    if location is None:
        return _("a sun: schedule needs the farm's location: add system.location with latitude and "
                 "longitude (decimal degrees, e.g. {latitude: 36.5, longitude: 127.5})")
    if isinstance(rule, SunRule) and rule.elevation_above is not None:
        highest = location.highest_elevation()
        if rule.elevation_above >= highest:
            degrees, latitude, most = format(rule.elevation_above, "g"), format(location.latitude, "g"), \
                format(highest, ".1f")
            return _("the sun never gets above %(degrees)s° at latitude %(latitude)s on any day of the year "
                     "(at most %(highest)s°)", degrees=degrees, latitude=latitude, highest=most)
    return None
