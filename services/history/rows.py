"""What history's modules share about rows and answers: text Postgres can hold, a row as JSON, the
hour axis of the hourly charts, and the (subject, query model, handler) routes the service answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import BaseModel

Route = tuple[str, type[BaseModel], Callable[[Any], Awaitable[Any]]]


class Where:
    """A WHERE clause from optional filters and its $n arguments, for the list queries: a filter
    whose value is None is left out."""

    def __init__(self, *fixed: str) -> None:
        self.parts = list(fixed)
        self.args: list[Any] = []

    def bind(self, value: Any) -> str:
        """`value` as the next argument; its placeholder ($n)."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, condition: str, value: Any) -> None:
        """`condition` with {} where the argument goes, e.g. "job = {}"."""
        if value is not None:
            self.parts.append(condition.format(self.bind(value)))

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.parts) if self.parts else ""

    def page(self, limit: int, offset: int) -> str:
        """LIMIT/OFFSET with their arguments added after the filters'."""
        return f" LIMIT {self.bind(limit)} OFFSET {self.bind(offset)}"


def text(value: Any) -> Any:
    """Postgres text cannot hold NUL: a job printing one must not make its row unstorable."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def jsonable(row: asyncpg.Record) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in row.items()}


def hour_axis(days: float) -> tuple[datetime, datetime, list[datetime]]:
    """(first hour, now, every hour from the first to now): a chart's x axis has no gaps."""
    now = datetime.now(UTC)
    first = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    hours: list[datetime] = []
    at = first
    while at <= now:
        hours.append(at)
        at += timedelta(hours=1)
    return first, now, hours


def hourly(rows: Iterable[asyncpg.Record], hours: list[datetime], key: str,
           keys: Iterable[str] | None = None) -> dict[str, Any]:
    """{"since", "hours", "series": {row[key]: [row["n"] per hour]}} from rows of (hour, key, n): a
    series for each of `keys` (zeros included), or for each key the rows have."""
    index = {h: i for i, h in enumerate(hours)}
    series: dict[str, list[int]] = {k: [0] * len(hours) for k in keys} if keys is not None else {}
    for r in rows:
        i = index.get(r["hour"].astimezone(UTC))
        if i is None or (keys is not None and r[key] not in series):
            continue
        series.setdefault(r[key], [0] * len(hours))[i] = int(r["n"])
    return {"since": hours[0].isoformat(), "hours": [h.isoformat() for h in hours], "series": series}
