"""The CLI's commands that talk to a running cropcron over NATS."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from shared import wire
from shared.atomic import BatchUncertain
from shared.bus import TRANSIENT_ERRORS, Bus, connect_once
from shared.catalog import (
    ApplyError,
    Changes,
    check_fits,
    plan_specs,
    plan_watches,
    read_specs,
    read_states,
    read_watches,
    set_paused,
    write_changes,
)
from shared.chores import chore_problems
from shared.config import Config, JobSpec, resolve_system, resolve_watches, to_specs
from shared.errors import CommandError, UserError
from shared.events import TERMINAL_STATES, RunEvent, decode
from shared.i18n import Translator, _
from shared.job_schedule import cron_words, describe_when, schedule_of
from shared.manual import CannotRunNow, manual_trigger
from shared.names import normalise_name, subject_key
from shared.nats_auth import Credentials
from shared.queries import CleanupRequest, LastQuery, RunsQuery, StatsQuery
from shared.reply import ask
from shared.topology import ensure_missing
from shared.watch_config import WatchConfig


async def open_bus(url: str, creds: Credentials | None = None) -> Bus:
    try:
        return await connect_once(url, "cropcron-cli", creds=creds)
    except ConnectionError as exc:
        raise CommandError(f"{exc}. Is cropcron running? Start it with `cropcron up --config FILE`, "
                           "or set NATS_URL.") from None


async def request(bus: Bus, subject: str, query: BaseModel, timeout: float = 10.0) -> Any:
    try:
        data = await ask(bus.nc, subject, query.model_dump_json().encode(), timeout)
    except Exception as exc:
        raise CommandError(f"no answer from the history service on {subject} ({type(exc).__name__}); "
                           "is it running?") from None
    reply = json.loads(data)
    if not reply.get("ok"):
        raise CommandError(reply.get("error", "request failed"))
    return reply["data"]


async def apply(bus: Bus, config: Config, base_dir: Path) -> tuple[list[str], list[str], list[str]]:
    # Create whatever does not exist yet (a fresh broker, or services still creating it: compose
    # starts this one-shot beside them, and a bucket missing here once left the farm with no
    # jobs), and change nothing that does: the services own the settings, from their environment.
    # chores' folders judged where they will be used: relative to this file, links resolved
    problems = chore_problems([(j.name, j.builtin) for j in config.jobs if j.builtin is not None],
                              config.system.cleanup_roots, None, base_dir)
    if problems:
        raise UserError("config not applied:\n" + "\n".join(problems))
    await ensure_missing(bus)
    previous = await read_specs(bus.js)
    old_watches = await read_watches(bus.js)
    watch_changes, _names = plan_watches(old_watches, resolve_watches(config, base_dir))
    job_changes, names = plan_specs(previous, resolve_system(config.system, base_dir), to_specs(config, base_dir, previous))
    # nothing is written unless everything fits; each bucket is then written all-or-nothing
    try:
        check_fits(bus, wire.KV_WATCHES, watch_changes)
        check_fits(bus, wire.KV_JOBS, job_changes)
    except ApplyError as exc:
        raise UserError(str(exc)) from None
    try:
        # watches first: a new on_file job must find its watch (and its root) when it first runs
        await write_changes(bus, wire.KV_WATCHES, watch_changes)
        await write_changes(bus, wire.KV_JOBS, job_changes)
    except (ApplyError, BatchUncertain, *TRANSIENT_ERRORS) as exc:
        await _restore_watches(bus, old_watches, watch_changes)
        raise CommandError(f"config not applied: {exc}") from None
    return names


async def _restore_watches(bus: Bus, old: dict[str, WatchConfig], written: Changes) -> None:
    """The jobs could not be written after the watches were: put the watches back as they were, so
    the broker holds the old config whole (a second failure is reported, not hidden)."""
    names = {subject_key(name): name for name in old}
    undo: Changes = {key: old[names[key]].model_dump_json().encode() if key in names else None for key in written}
    try:
        await write_changes(bus, wire.KV_WATCHES, undo)
    except Exception as exc:
        raise CommandError(f"config not applied, and the folder watches written before the failure could not be "
                           f"put back ({exc!r}); run `cropcron apply` again") from None


async def job_rows(bus: Bus, with_last: bool = True, words: Translator | None = None) -> list[dict[str, Any]]:
    """Every applied job, for `cropcron jobs`; `schedule` in `words` for people (in words, not cron),
    else as --json always gave it."""
    specs = await read_specs(bus.js)
    states = await read_states(bus.js)
    last: dict[str, Any] = {}
    if with_last and specs:
        try:
            last = await request(bus, wire.HISTORY_LAST, LastQuery(jobs=sorted(specs)), timeout=5)
        except CommandError:
            last = {}
    now = datetime.now(UTC)
    rows = []
    for name in sorted(specs):
        spec = specs[name]
        sched = schedule_of(spec)
        paused = bool(states.get(name) and states[name].paused)
        nxt = sched.next_run_after(now) if sched and not paused else None
        rows.append({
            "name": name, "key": subject_key(name), "type": spec.job.type, "schedule": describe_when(spec, lambda expr: cron_words(expr, words), words) if words
            else describe_when(spec), "timezone": spec.timezone,
            "next_run": nxt.astimezone(ZoneInfo(spec.timezone)).isoformat() if nxt else None,
            "last_state": (last.get(name) or {}).get("state"), "last_at": (last.get(name) or {}).get("at"),
            "paused": paused, "enabled": spec.job.enabled, "priority": spec.job.priority,
        })
    return rows


async def require_job(bus: Bus, name: str) -> JobSpec:
    """The applied job named `name` as typed (NFC-normalised: a terminal may send decomposed Hangul)."""
    specs = await read_specs(bus.js)
    name = normalise_name(name)
    if name not in specs:
        known = ", ".join(sorted(specs)) or _("none applied")
        raise UserError(_("unknown job %(name)s (known: %(known)s)", name=repr(name), known=known))
    return specs[name]


async def run_now(bus: Bus, name: str, wait: float | None) -> dict[str, Any]:
    """A manual trigger through the same path as ticks; optionally wait for its outcome."""
    spec = await require_job(bus, name)
    name = spec.name
    try:
        subject, trigger = manual_trigger(spec, "cli")
    except CannotRunNow as exc:
        raise UserError(str(exc)) from None
    outcome: asyncio.Future[RunEvent] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Any) -> None:
        ev = decode(RunEvent, msg.data)
        if ev.run_id == trigger.run_id and ev.state in TERMINAL_STATES and not outcome.done():
            outcome.set_result(ev)

    sub = await bus.nc.subscribe(wire.run_event_subject(name, "*"), cb=on_event) if wait else None
    await bus.js.publish(subject, trigger.to_bytes(), headers={wire.HEADER_MSG_ID: trigger.run_id})
    result: dict[str, Any] = {"run_id": trigger.run_id, "job": name, "state": "queued"}
    if sub is not None and wait:
        try:
            ev = await asyncio.wait_for(outcome, wait)
            result.update(state=ev.state.value, exit_code=ev.exit_code, error=ev.error, duration_s=ev.duration_s)
        except TimeoutError:
            result["state"] = "still running"
        finally:
            await sub.unsubscribe()
    return result


async def pause(bus: Bus, name: str, paused: bool) -> str:
    """Pause or resume; returns the job's name as applied."""
    spec = await require_job(bus, name)
    await set_paused(bus.js, spec.name, paused)
    return spec.name


async def history(bus: Bus, query: RunsQuery) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = await request(bus, wire.HISTORY_RUNS, query)
    return rows


async def stats(bus: Bus, days: float) -> dict[str, Any]:
    data: dict[str, Any] = await request(bus, wire.HISTORY_STATS, StatsQuery(days=days))
    return data


async def cleanup(bus: Bus, days: float) -> dict[str, Any]:
    data: dict[str, Any] = await request(bus, wire.HISTORY_CLEANUP, CleanupRequest(older_than_days=days))
    return data
