"""Human durations in config: "90s", "5m", "2h", "1d", "1h30m", "250ms" or a bare number of seconds."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
# Longer than any schedule, timeout or window can mean; far below what datetime arithmetic and the
# broker's nanosecond delays can hold (an interval of 99999999999w passed validation once and
# crashed the timer at every start with an OverflowError).
MAX_SECONDS = 3650 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds as a float; raises ValueError naming the bad text."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '90s', '5m' or '2h', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(f"expected a duration like '90s', '5m' or '2h', got {value!r}")
    else:
        raise ValueError(f"expected a duration like '90s', '5m' or '2h', got {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    if seconds > MAX_SECONDS:
        raise ValueError(f"duration must be at most {MAX_SECONDS // 86400:.0f}d (10 years), got {value!r}")
    return seconds


def parse_since(text: str) -> datetime:
    """A point in time given as a duration ago ("2h") or an ISO time (UTC when it has no offset).
    Raises ValueError naming the bad text. Shared by the CLI's --since and the dashboard's filters."""
    text = text.strip()
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a duration like 2h or an ISO time like 2026-11-27T06:00, got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    parts = []
    rest = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


# A float of seconds in Python, a duration string or number in YAML/JSON.
Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(lambda s: s, return_type=float)]
