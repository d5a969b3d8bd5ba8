"""What the dashboard knows, all of it over NATS: history queries by request/reply, job specs and
state from the Catalog (kept live from KV), heartbeats from KV, and manual runs / pause / resume
through the same subjects and buckets the CLI uses."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from services.dashboard.settings import DashboardSettings
from services.dashboard.words import describe
from shared import wire
from shared.bus import Bus
from shared.catalog import Catalog, set_paused
from shared.config import JobSpec
from shared.events import RunState
from shared.flights import open_flights
from shared.i18n import Translator, resolve_locale, translator
from shared.job_schedule import schedule_of
from shared.kv_read import bucket_entries
from shared.manual import manual_trigger
from shared.queries import (
    AlertsQuery,
    CountsQuery,
    DurationsQuery,
    FilesHourlyQuery,
    FlightsQuery,
    HourlyQuery,
    LastQuery,
    RefusedQuery,
    RunsQuery,
    StatsQuery,
)
from shared.reply import ask

log = logging.getLogger("cropcron.dashboard")

BACKBONE = ("timer", "runner", "history")  # always expected; other services show when they beat


class Unavailable(RuntimeError):
    """A part of the system did not answer (503 for the API, a notice on pages)."""


class Backend:
    def __init__(self, bus: Bus, catalog: Catalog, settings: DashboardSettings) -> None:
        self.bus = bus
        self.catalog = catalog
        self.settings = settings

    async def ask(self, subject: str, query: BaseModel, timeout: float | None = None) -> Any:
        try:
            data = await ask(self.bus.nc, subject, query.model_dump_json().encode(),
                             timeout or self.settings.request_timeout)
        except Exception as exc:
            raise Unavailable(f"no answer on {subject} ({type(exc).__name__}): is the history service running?") \
                from None
        reply = json.loads(data)
        if not reply.get("ok"):
            raise Unavailable(f"{subject}: {reply.get('error', 'request failed')}")
        return reply["data"]

    def words(self) -> Translator:
        """The farm's language as applied (system.locale, or CROPCRON_LOCALE)."""
        return translator(resolve_locale(self.catalog.system.locale))

    # -- jobs --------------------------------------------------------------------------
    def spec(self, name: str) -> JobSpec | None:
        return self.catalog.specs.get(name)

    async def jobs(self) -> list[dict[str, Any]]:
        specs = dict(sorted(self.catalog.specs.items()))
        last: dict[str, Any] = {}
        stats: dict[str, Any] = {}
        history_ok = True
        if specs:
            try:
                answers: tuple[Any, Any] = await asyncio.gather(self.ask(wire.HISTORY_LAST, LastQuery(jobs=list(specs))),
                                                               self.ask(wire.HISTORY_STATS, StatsQuery(days=7)))
                last, stats = answers[0], {r["job"]: r for r in answers[1]["jobs"]}
            except Unavailable as exc:
                log.warning("dashboard: %s", exc)
                history_ok = False
        now = datetime.now(UTC)
        return [self._row(spec, last.get(name) or {}, stats.get(name) or {}, now, history_ok)
                for name, spec in specs.items()]

    async def job(self, name: str) -> dict[str, Any] | None:
        rows = [r for r in await self.jobs() if r["name"] == name] if name in self.catalog.specs else []
        if not rows:
            return None
        rows[0]["upcoming"] = self.upcoming(self.catalog.specs[name], datetime.now(UTC))
        return rows[0]

    def upcoming(self, spec: JobSpec, now: datetime, count: int = 5) -> list[str]:
        """The job's next runs (a sun job's move day by day; days without its event are skipped)."""
        out: list[str] = []
        nxt = self.next_run(spec, now)
        sched = schedule_of(spec) if nxt is not None else None
        while nxt is not None and sched is not None and len(out) < count:
            out.append(nxt.astimezone(ZoneInfo(spec.timezone)).isoformat())
            nxt = sched.next_run_after(nxt)
        return out

    def next_run(self, spec: JobSpec, now: datetime) -> datetime | None:
        sched = schedule_of(spec)
        if sched is None or self.catalog.paused(spec.name):
            return None
        return sched.next_run_after(now)  # a sun job's next day with the event

    def _row(self, spec: JobSpec, last: dict[str, Any], stats: dict[str, Any], now: datetime,
             history_ok: bool) -> dict[str, Any]:
        nxt = self.next_run(spec, now)
        return {
            "name": spec.name, "type": spec.job.type, "description": spec.job.description,
            "schedule": describe(spec, self.words()), "timezone": spec.timezone,
            "next_run": nxt.astimezone(ZoneInfo(spec.timezone)).isoformat() if nxt else None,
            "paused": self.catalog.paused(spec.name), "enabled": spec.job.enabled, "priority": spec.job.priority,
            "last_state": last.get("state"), "last_at": last.get("at"), "last_run_id": last.get("run_id"),
            "success_rate": success_rate(stats), "mean_duration_s": stats.get("mean_duration_s"),
            "p95_duration_s": stats.get("p95_duration_s"), "runs_7d": stats.get("total", 0),
            "history_available": history_ok,
        }

    def next_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        upcoming = [(nxt, spec) for spec in self.catalog.specs.values() if (nxt := self.next_run(spec, now))]
        upcoming.sort(key=lambda pair: pair[0])
        return [{"job": spec.name, "at": nxt.astimezone(ZoneInfo(spec.timezone)).isoformat(),
                 "schedule": describe(spec, self.words())} for nxt, spec in upcoming[:limit]]

    async def run_now(self, name: str, who: str) -> str:
        """A manual trigger, exactly as `cropcron run` sends it (same subject, id and dedup)."""
        subject, trigger = manual_trigger(self.catalog.specs[name], who)  # CannotRunNow: a job on files
        await self.bus.js.publish(subject, trigger.to_bytes(), headers={wire.HEADER_MSG_ID: trigger.run_id},
                                  timeout=self.settings.request_timeout)
        log.info("dashboard audit: manual run %s of %s requested by %s", trigger.run_id, name, who)
        return trigger.run_id

    async def set_paused(self, name: str, paused: bool, who: str) -> None:
        await set_paused(self.bus.js, name, paused)
        log.info("dashboard audit: %s %s by %s", name, "paused" if paused else "resumed", who)

    # -- runs and reports --------------------------------------------------------------
    async def runs(self, query: RunsQuery) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.ask(wire.HISTORY_RUNS, query)
        return rows

    async def run(self, run_id: str) -> dict[str, Any] | None:
        rows = await self.runs(RunsQuery(run_id=run_id, with_attempts=True, limit=1, offset=0))
        return rows[0] if rows else None

    async def hourly(self, days: float) -> dict[str, Any]:
        data: dict[str, Any] = await self.ask(wire.HISTORY_REPORT_HOURLY, HourlyQuery(days=days))
        return data

    async def durations(self, job: str, limit: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.ask(wire.HISTORY_REPORT_DURATIONS, DurationsQuery(job=job, limit=limit))
        return rows

    async def alerts(self, limit: int) -> dict[str, Any]:
        """Recent alerts, or why there are none to show: the notifier may not be deployed."""
        try:
            data = await self.ask(wire.HISTORY_ALERTS, AlertsQuery(limit=limit, offset=0), timeout=self.settings.alerts_timeout)
        except Unavailable as exc:
            return {"available": False, "alerts": [], "error": str(exc)}
        items = data.get("alerts", data.get("items", [])) if isinstance(data, dict) else data
        return {"available": True, "alerts": items if isinstance(items, list) else [], "error": None}

    # -- uploads (issue 14) ---------------------------------------------------------
    async def flights(self, query: FlightsQuery) -> list[dict[str, Any]]:
        """Closed flights from history, newest first, each with its batch run's state."""
        data: dict[str, Any] = await self.ask(wire.HISTORY_FLIGHTS, query)
        rows: list[dict[str, Any]] = data["flights"]
        return rows

    async def open_flights(self, watch: str | None = None, job: str | None = None,
                           with_files: bool = False) -> list[dict[str, Any]]:
        """Flights still receiving files: the dispatcher's open batches in KV (not in history yet)."""
        try:
            entries = await asyncio.wait_for(bucket_entries(self.bus.js, wire.KV_BATCHES),
                                             self.settings.request_timeout)
        except Exception as exc:
            raise Unavailable(f"cannot read the open flights from KV {wire.KV_BATCHES} ({type(exc).__name__})") \
                from None
        found = [f for f in open_flights(entries, watch) if job is None or f["job"] == job]
        if not with_files:
            for f in found:
                del f["file_list"]
        return found

    async def flight(self, flight_id: str, limit: int, offset: int) -> dict[str, Any] | None:
        """One flight with a page of its files: from history once closed, else from KV while open."""
        data: dict[str, Any] = await self.ask(wire.HISTORY_FLIGHTS, FlightsQuery(id=flight_id, limit=limit,
                                                                                  offset=offset))
        if data["flights"]:
            return {"flight": data["flights"][0], "files": data["files"], "total_files": data["total_files"]}
        for found in await self.open_flights(with_files=True):
            if found["id"] == flight_id:
                files = found.pop("file_list")
                return {"flight": found, "files": files[offset:offset + limit], "total_files": len(files)}
        return None

    async def refused(self, query: RefusedQuery) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.ask(wire.HISTORY_REFUSED, query)
        return rows

    async def files_hourly(self, days: float) -> dict[str, Any]:
        data: dict[str, Any] = await self.ask(wire.HISTORY_REPORT_FILES, FilesHourlyQuery(days=days))
        return data

    # -- overview ----------------------------------------------------------------------
    async def overview(self) -> dict[str, Any]:
        tz = ZoneInfo(self.catalog.system.timezone)
        midnight = datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0)
        out: dict[str, Any] = {"timezone": str(tz), "day_start": midnight.isoformat(), "errors": []}
        # independent questions, asked at once: the page waits for the slowest, not their sum
        health, alerts, history = await asyncio.gather(self.health(), self.alerts(10), asyncio.gather(
            self.ask(wire.HISTORY_REPORT_COUNTS, CountsQuery(since=midnight)),
            self.ask(wire.HISTORY_STATS, StatsQuery(days=7)),
            self.runs(RunsQuery(state=RunState.STARTED, limit=50, offset=0)),
            self.runs(RunsQuery(state=RunState.RETRYING, limit=50, offset=0)), return_exceptions=True))
        out.update(health=health, alerts=alerts, next_runs=self.next_runs())
        failed = [r for r in history if isinstance(r, BaseException)]
        if failed:
            if not all(isinstance(r, Unavailable) for r in failed):
                raise next(r for r in failed if not isinstance(r, Unavailable))
            out["errors"].append(str(failed[0]))
            out.update(today={}, success_rate_7d=None, week={}, running=[], retrying=[])
            return out
        today, week, running, retrying = history
        out.update(today=today, week=week["total"], success_rate_7d=success_rate(week["total"]), running=running,
                   retrying=retrying)
        return out

    async def health(self) -> dict[str, Any]:
        services = await self._heartbeats()
        by_name: dict[str, list[dict[str, Any]]] = {}
        for beat in services:
            by_name.setdefault(beat["service"], []).append(beat)
        for name in BACKBONE:
            by_name.setdefault(name, [])
        history = [b for b in by_name.get("history", []) if b["alive"]]
        db = None if not history else all(b.get("db_ok", True) for b in history)
        return {
            "nats": {"ok": self.bus.nc.is_connected, "url": _no_credentials(self.bus.nc.connected_url),
                     "reconnects": self.bus.health.reconnects},
            "postgres": {"ok": db, "via": "history heartbeat"},
            "services": [{"service": name, "instances": beats, "ok": any(b["alive"] for b in beats)}
                         for name, beats in sorted(by_name.items())],
        }

    async def _heartbeats(self) -> list[dict[str, Any]]:
        now = datetime.now(UTC)
        out = []
        for key, raw in (await bucket_entries(self.bus.js, wire.KV_SERVICES)).items():
            try:
                beat = json.loads(raw)
                at = datetime.fromisoformat(beat["at"])
                age = (now - at).total_seconds()
                interval = float(beat.get("interval") or 5)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("dashboard: unreadable heartbeat %r: %r", key, exc)
                continue
            out.append({"service": str(beat.get("service", key.split(".")[0])),
                        "instance": str(beat.get("instance", "")), "at": at.isoformat(), "age_s": round(age, 1),
                        "alive": age <= interval * self.settings.service_stale_factor,
                        **{k: v for k, v in beat.items() if k in ("db_ok", "role", "running", "written")}})
        return sorted(out, key=lambda b: (b["service"], b["instance"]))


def success_rate(stats: dict[str, Any]) -> float | None:
    """Succeeded / (succeeded + failed/dead + missed): the share of runs due that did their work.
    Skipped runs (overlap, paused) were deliberate and runs in progress have no outcome yet."""
    done = int(stats.get("succeeded") or 0) + int(stats.get("failed") or 0) + int(stats.get("missed") or 0)
    return round(int(stats.get("succeeded") or 0) / done, 4) if done else None


def _no_credentials(url: Any) -> str | None:
    if url is None:
        return None
    host = url.hostname or ""
    return f"{url.scheme}://{host}:{url.port}" if url.port else f"{url.scheme}://{host}"
