"""Dead-man's switch. Overdue: for every cron/interval job, the first scheduled instant after its
last success (or after it was defined/resumed, or after the notifier first saw it) plus a grace
must not pass without a success. Expected instants come from the job specs (the catalog), last
successes from the run events and history, so this works with the timer dead. Silent services:
a service whose heartbeats in KV are all older than service_down_after raises service_down; a
fresh one resolves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime, timedelta

from services.notifier.context import Notifier
from services.notifier.expect import check_expectations
from services.notifier.intake import raise_alerts
from services.notifier.rules import SOURCE
from services.notifier.state import JobWatch, save_state
from shared import wire
from shared.config import JobSpec
from shared.events import Alert, utcnow
from shared.i18n import N_  # the texts are translated where they are shown (notifier/render.py)
from shared.job_schedule import schedule_of
from shared.kv_read import bucket_entries
from shared.notify_config import NotificationsConfig, OverdueConfig
from shared.queries import LastQuery
from shared.reply import ask

log = logging.getLogger("cropcron.notifier")


def grace_for(spec: JobSpec, instant: datetime, following: datetime | None, cfg: OverdueConfig) -> float:
    """Per-job setting, else one global grace, else clamp(period * factor, min_grace, max_grace)."""
    if spec.name in cfg.jobs:
        return cfg.jobs[spec.name]
    if cfg.grace is not None:
        return cfg.grace
    period = (following - instant).total_seconds() if following else cfg.max_grace
    return min(max(period * cfg.factor, cfg.min_grace), cfg.max_grace)


def since_when(spec: JobSpec, watch: JobWatch, resumed_at: datetime | None, started_at: datetime) -> datetime:
    """From when a success is expected: the last success (or, not knowing one, when this notifier
    started watching), but never before the schedule was applied or the job resumed."""
    since = watch.last_success if watch.last_success is not None else started_at
    return max(d for d in (since, spec.defined_at, resumed_at) if d is not None)


def overdue_instant(spec: JobSpec, since: datetime, now: datetime,
                    cfg: OverdueConfig) -> tuple[datetime, float] | None:
    """The first expected instant after `since` whose grace has passed without a success."""
    schedule = schedule_of(spec)
    if schedule is None or spec.job.run_at is not None:
        return None  # on-demand, file-triggered, one-shot or disabled: nothing is expected
    # a sun job's day without the event expects no run: the next day with one does
    instant = schedule.next_run_after(since)
    if instant is None:
        return None
    grace = grace_for(spec, instant, schedule.next_run_after(instant), cfg)
    return (instant, grace) if instant + timedelta(seconds=grace) <= now else None


async def seed_last_success(svc: Notifier) -> None:
    """Last successes for jobs this notifier has not seen yet, from history (best effort: without
    it the notifier's own start time is the baseline, which never raises a false alarm)."""
    missing = [name for name in svc.catalog.specs if svc.state.jobs.get(name) is None]
    if not missing:
        return
    try:
        data = json.loads(await ask(svc.bus.nc, wire.HISTORY_LAST, LastQuery(jobs=missing).model_dump_json().encode(),
                                    5))
    except Exception as exc:
        log.info("notifier: no last runs from history (%r); overdue checks start from now", exc)
        return
    for job, row in (data.get("data") or {}).items() if data.get("ok") else []:
        if row.get("state") == "succeeded" and (row.get("finished_at") or row.get("at")):
            when = datetime.fromisoformat(row.get("finished_at") or row["at"])
            svc.state.jobs.setdefault(job, JobWatch()).last_success = when


async def check_overdue(svc: Notifier, config: NotificationsConfig) -> bool:
    if not config.overdue.enabled:
        return False
    now = utcnow()
    alerts: list[Alert] = []
    for name, spec in list(svc.catalog.specs.items()):
        if svc.catalog.paused(name):
            continue
        watch = svc.state.jobs.get(name) or JobWatch()
        state = svc.catalog.states.get(name)
        since = since_when(spec, watch, state.resumed_at if state else None, svc.started_at)
        found = overdue_instant(spec, since, now, config.overdue)
        if found is None or watch.overdue_for == found[0]:
            continue
        instant, grace = found
        stamp = instant.isoformat().replace("+00:00", "Z")
        alerts.append(Alert(
            id=f"overdue.{name}.{stamp}", level="error", kind="overdue", job=name, job_type=spec.job.type,
            summary=f"{name}: no successful run since its {stamp} instant (grace {grace:g}s)", source=SOURCE, at=now,
            text=N_("The job was expected to succeed by then. Is the timer running? Are runners up? Is the job stuck?"),
            details={"expected_at": instant.isoformat(), "grace_s": grace,
                     "last_success": watch.last_success.isoformat() if watch.last_success else None}))
        watch.overdue_for = instant
        watch.firing["overdue"] = "error"
        svc.state.jobs[name] = watch
        svc.state.touch(name, urgent=True)
    if alerts:
        await raise_alerts(svc, alerts)
        log.warning("notifier: overdue: %s", ", ".join(a.job or "" for a in alerts))
    return bool(alerts)


async def _heartbeats(svc: Notifier) -> dict[str, list[tuple[str, datetime]]]:
    """service -> [(instance key, last heartbeat)] from KV cropcron_services."""
    out: dict[str, list[tuple[str, datetime]]] = {}
    for key, raw in (await bucket_entries(svc.bus.js, wire.KV_SERVICES)).items():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            beat = json.loads(raw)
            out.setdefault(str(beat.get("service") or key.split(".", 1)[0]), []).append(
                (key, datetime.fromisoformat(beat["at"])))
    return out


async def check_services(svc: Notifier, config: NotificationsConfig) -> bool:
    """Per service: down when it has heartbeats and none is fresh (a standby timer taking over, a
    restarted process under a new instance name, or other runners still beating all count as up);
    resolved when a fresh one appears or the last one is removed by a clean stop."""
    now = utcnow()
    beats = await _heartbeats(svc)
    alerts: list[Alert] = []
    for service in sorted(beats.keys() | svc.state.down.keys()):
        instances = beats.get(service, [])
        latest = max((at for _, at in instances), default=None)
        down = latest is not None and (now - latest).total_seconds() > config.service_down_after
        fingerprint = f"service_down:{service}"
        if down and service not in svc.state.down:
            assert latest is not None
            alerts.append(Alert(
                id=f"service_down.{service}.{latest.isoformat()}", level="critical", kind="service_down",
                summary=f"service {service} silent for {(now - latest).total_seconds():.0f}s",
                text=N_("No instance of it is heartbeating: the process died, hangs, or lost the bus."),
                source=SOURCE, at=now, fingerprint=fingerprint,
                details={"service": service, "instances": [k for k, _ in instances],
                         "last_heartbeat": latest.isoformat()}))
            svc.state.down[service] = "critical"
            svc.state.down_dirty = True
        elif not down and service in svc.state.down:
            how = "back" if latest is not None else "stopped cleanly"
            alerts.append(Alert(id=f"service_up.{service}.{(latest or now).isoformat()}", level="critical",
                                kind="service_down", resolved=True, summary=f"service {service} {how}",
                                source=SOURCE, at=now, fingerprint=fingerprint, details={"service": service}))
            del svc.state.down[service]
            svc.state.down_dirty = True
    if alerts:
        await raise_alerts(svc, alerts)
    return bool(alerts)


async def loop(svc: Notifier, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), svc.ns.deadman_interval)
        if stop.is_set() or svc.config is None:
            continue
        try:
            await check_overdue(svc, svc.config)
            await check_services(svc, svc.config)
            try:
                await check_expectations(svc)
            except Exception as exc:  # history busy or down: no state changed, the next check asks again
                log.warning("notifier: data alarms not checked (%r)", exc)
            await save_state(svc.bus, svc.state, everything=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("notifier: dead-man check failed (%r); next in %.0fs", exc, svc.ns.deadman_interval)
