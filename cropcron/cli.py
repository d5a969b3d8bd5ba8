"""`cropcron`: run the system, and operate it.

Exit codes: 0 ok; 1 the operation failed (e.g. cropcron is not reachable); 2 bad input (arguments,
config file, unknown job). User errors print one clear message, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from nats.js.errors import ServiceUnavailableError
from pydantic import ValidationError

from cropcron import cli_alerts, cli_files, cli_health, cli_nats, cli_replicas, commands
from cropcron.datadir_lock import DataDirError
from cropcron.embedded import EmbeddedError, default_data_dir, runtime_connection, runtime_file
from cropcron.services import SERVICE_NAMES, ServiceFailed, run_services
from cropcron.tables import print_json, print_table
from shared import nats_auth
from shared.bus import Bus, IncompatibleBroker
from shared.catalog import read_system
from shared.config import ConfigError, SystemConfig, load_config
from shared.durations import parse_since
from shared.errors import CommandError, UserError
from shared.events import RunState
from shared.flights import size_text
from shared.i18n import N_, Translator, resolve_locale, translator, using
from shared.nats_auth import Credentials, CredentialsError
from shared.permissions import OUTSIDE_USERS
from shared.queries import RunsQuery
from shared.settings import ServiceSettings

# words people read for ids (translated in shared/locales; --json keeps the ids)
STATE_WORDS = frozenset({N_("started"), N_("succeeded"), N_("failed"), N_("retrying"), N_("dead"), N_("skipped"),
                         N_("missed"), N_("queued"), N_("still running")})
STATS_COLUMNS = [N_("total"), N_("succeeded"), N_("failed"), N_("missed"), N_("skipped"), N_("mean_duration_s"),
                 N_("p95_duration_s")]


class _OneLine(logging.Filter):
    """The exception's repr on the line instead of its traceback. asyncpg's pool logs a whole
    traceback each time it fails to reconnect while Postgres restarts; one line says as much."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()} ({record.exc_info[1]!r})"
            record.args = None
            record.exc_info = None
        return True


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("asyncpg.pool").addFilter(_OneLine())


def _nats_url(args: argparse.Namespace) -> tuple[str, Credentials | None]:
    """Where the broker is and who to be: NATS_URL with the CROPCRON_NATS_* credentials, else
    what `cropcron up` wrote into <data-dir>/runtime.json (its broker, as the operator user `cli`)."""
    if os.environ.get("NATS_URL"):
        return os.environ["NATS_URL"], nats_auth.from_environment("cli")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    found = runtime_connection(data_dir)
    if found is not None:
        return found
    raise CommandError(f"cropcron does not seem to be running (no {runtime_file(data_dir)}); start it with "
                       "`cropcron up --config FILE`, or set NATS_URL")


def _with_bus(args: argparse.Namespace, fn: Callable[[Bus], Awaitable[int]]) -> int:
    async def main() -> int:
        url, creds = _nats_url(args)
        bus = await commands.open_bus(url, creds)
        try:
            # people's output in the farm's language and zone, as applied (`--json` stays English);
            # an outside user (a job announcing files as `uploader`) may not read the applied config:
            # CROPCRON_LOCALE or the default then
            restricted = creds is not None and creds.user in OUTSIDE_USERS
            system = SystemConfig() if restricted else await read_system(bus.js)
            args.words, args.tz = translator(resolve_locale(system.locale)), system.timezone
            with using(args.words.locale):  # what the commands say to people (unknown job, ...)
                return await fn(bus)
        finally:
            await bus.close()

    return asyncio.run(main())


def _since(text: str) -> datetime:
    """'2h' (ago), or an ISO date/time."""
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def _limit(text: str) -> int:
    value = _positive(text)
    if value != int(value) or value > 10000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 10000, got {text!r}")
    return int(value)


# -- commands --------------------------------------------------------------------------
def _state(value: str | None, _: Translator) -> str | None:
    return _(value) if value in STATE_WORDS else value


def _words(args: argparse.Namespace) -> Translator:
    words: Translator = getattr(args, "words", None) or translator(resolve_locale(None))
    return words


def cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.file)  # problems come in the file's own language (system.locale)
    args.words = _ = translator(resolve_locale(config.system.locale))
    cli_alerts.check_secrets(config)  # notification secrets present, webhook URLs well formed
    if args.json:
        print_json({"ok": True, "jobs": [j.name for j in config.jobs]})
    else:
        print(_("%(file)s: ok, %(count)s jobs", file=args.file, count=len(config.jobs)))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    config = load_config(args.file)  # a bad file is refused before anything is touched
    args.words = translator(resolve_locale(config.system.locale))
    cli_alerts.check_secrets(config)
    base_dir = Path(args.file).resolve().parent

    async def go(bus: Bus) -> int:
        added, changed, removed = await commands.apply(bus, config, base_dir)
        await cli_alerts.apply_notifications(bus, config)
        _ = translator(resolve_locale(config.system.locale))  # the language just applied
        if args.json:
            print_json({"added": added, "changed": changed, "removed": removed})
        else:
            print(_("applied %(file)s: %(added)s added, %(changed)s changed, %(removed)s removed", file=args.file,
                    added=len(added), changed=len(changed), removed=len(removed)))
            for label, names in ((_("added"), added), (_("changed"), changed), (_("removed"), removed)):
                for name in names:
                    print(f"  {label}: {name}")
        return 0

    return _with_bus(args, go)


def cmd_jobs(args: argparse.Namespace) -> int:
    async def go(bus: Bus) -> int:
        if args.json:
            print_json(await commands.job_rows(bus))
            return 0
        _ = _words(args)
        rows = await commands.job_rows(bus, words=_)
        print_table([_("name"), _("key"), _("type"), _("schedule"), _("timezone"), _("next run"), _("last state"),
                     _("paused")],
                    [[r["name"], r["key"], r["type"], r["schedule"], r["timezone"], _.when(r["next_run"], r["timezone"]) if r["next_run"] else None,
                      _state(r["last_state"], _), _("yes") if r["paused"] else _("no")] for r in rows])
        return 0

    return _with_bus(args, go)


def cmd_run(args: argparse.Namespace) -> int:
    async def go(bus: Bus) -> int:
        result = await commands.run_now(bus, args.job, args.wait)
        if args.json:
            print_json(result)
        else:
            _ = _words(args)
            print(_("run %(id)s of %(job)s: %(state)s", id=result["run_id"], job=result["job"],
                    state=_state(result["state"], _))
                  + (f" ({result.get('error')})" if result.get("error") else ""))
        # 0 only for what was asked: queued (no --wait) or succeeded; a run still going at the end
        # of --wait, or failing, is not a success for a script waiting on it
        return 0 if result["state"] in ("queued", "succeeded") else 1

    return _with_bus(args, go)


def cmd_pause(args: argparse.Namespace, paused: bool) -> int:
    async def go(bus: Bus) -> int:
        name = await commands.pause(bus, args.job, paused)
        if args.json:
            print_json({"job": name, "paused": paused})
        else:
            _ = _words(args)
            done = _("paused") if paused else _("resumed")
            print(f"{name}: {done}")
        return 0

    return _with_bus(args, go)


def cmd_history(args: argparse.Namespace) -> int:
    query = RunsQuery(job=args.job, state=args.state, since=args.since, limit=args.limit, offset=0,
                      run_id=args.run_id, with_attempts=bool(args.run_id))

    async def go(bus: Bus) -> int:
        rows = await commands.history(bus, query)
        if args.json:
            print_json(rows)
            return 0
        _ = _words(args)
        # English keeps the ISO times it always printed; other languages read the farm's zone
        when = (lambda v: v) if _.locale == "en" else (lambda v: _.when(v, args.tz) if v else None)
        # a file run's file (watch: path, size), as a last column when any run on the page has one
        files = any(r.get("file_path") for r in rows)
        print_table([_("run id"), _("job"), _("state"), _("attempt"), _("scheduled"), _.pgettext("column", "started"),
                     _("duration s"), _("exit"), _("error / reason"), *([_("file")] if files else [])],
                    [[r["run_id"], r["job"], _state(r["state"], _), r["attempt"], when(r["scheduled_at"]),
                      when(r["started_at"]), r["duration_s"], r["exit_code"], r["error"] or r["reason"],
                      *([_file(r)] if files else [])] for r in rows])
        return 0

    return _with_bus(args, go)


def _file(run: dict[str, Any]) -> str | None:
    if not run.get("file_path"):
        return None
    return f"{run.get('file_watch')}: {run['file_path']} ({size_text(run.get('file_size'))})"


def cmd_stats(args: argparse.Namespace) -> int:
    async def go(bus: Bus) -> int:
        data = await commands.stats(bus, args.days)
        if args.json:
            print_json(data)
            return 0
        _ = _words(args)
        since = data["since"] if _.locale == "en" else _.when(data["since"], args.tz)
        days = format(args.days, "g")
        print(_("last %(days)s days (since %(since)s)", days=days, since=since))
        cols = STATS_COLUMNS
        rows = [[_("ALL"), *(data["total"].get(c) for c in cols)]]
        rows += [[_("job %(name)s", name=r["job"]), *(r.get(c) for c in cols)] for r in data["jobs"]]
        rows += [[_("type %(type)s", type=r["job_type"]), *(r.get(c) for c in cols)] for r in data["types"]]
        print_table(["", *(_(c) for c in cols)], rows)
        return 0

    return _with_bus(args, go)


def cmd_cleanup(args: argparse.Namespace) -> int:
    async def go(bus: Bus) -> int:
        data = await commands.cleanup(bus, args.older_than_days)
        print_json(data) if args.json else print(_words(args)(
            "removed %(runs)s runs, %(rejections)s rejections, %(alerts)s alerts, %(deliveries)s alert deliveries",
            runs=data["runs"], rejections=data["rejections"], alerts=data.get("alerts", 0),
            deliveries=data.get("deliveries", 0)))
        return 0

    return _with_bus(args, go)


def _serve(names: list[str], settings: ServiceSettings, before: Callable[[], Awaitable[None]] | None = None,
           on_http: Callable[[str], None] | None = None, runner_processes: int = 1) -> int:
    from cropcron.runner_pool import RunnerPool

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if before is not None:
            await before()
        # this process runs one runner; the others are processes of their own
        pool = RunnerPool(runner_processes - 1, settings.instance, settings.kill_grace)
        extra = asyncio.create_task(pool.run(stop))
        try:
            await run_services(names, settings, stop, on_http=on_http)
        finally:
            stop.set()
            await extra
        return 0

    return asyncio.run(main())


def cmd_serve(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    processes = getattr(args, "processes", 1)
    if processes > 1 and "runner" not in args.services:
        raise UserError("serve: --processes is the number of runner processes; add `runner` to the services")
    return _serve(args.services, ServiceSettings(), runner_processes=processes)  # type: ignore[call-arg]


def cmd_up(args: argparse.Namespace) -> int:
    from cropcron import up  # the services' imports, only for `up` and `serve`
    from cropcron.datadir_lock import DataDirLock

    data_dir = (Path(args.data_dir) if args.data_dir else default_data_dir()).absolute()
    lock = DataDirLock(data_dir)
    lock.acquire()  # before anything starts: a second `up` on this data dir exits 2 here
    try:
        config = load_config(args.config)
        _setup_logging(args.verbose)
        return asyncio.run(up.main(args.config, Path(args.config).resolve().parent, config, data_dir))
    except OSError as exc:  # e.g. the disk is full or a file in the data dir is not writable
        raise EmbeddedError(f"up: {exc}") from None
    finally:
        lock.release()


# -- parser ----------------------------------------------------------------------------
def _processes(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 64, got {raw!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_argument("--data-dir", help="where `cropcron up` keeps its data (default: %(default)s)",
                        default=None)
    parser = argparse.ArgumentParser(prog="cropcron", description="Scheduling backbone for drone crop monitoring.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", parents=[common], help="run everything (embedded NATS and Postgres unless NATS_URL/"
                       "DATABASE_URL are set)")
    p.add_argument("--config", required=True, help="the YAML config to apply")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("serve", help="run services against NATS_URL / DATABASE_URL (for compose, scale-out)")
    p.add_argument("services", nargs="+", choices=SERVICE_NAMES, metavar="SERVICE",
                   help="one or more of: " + ", ".join(SERVICE_NAMES))
    p.add_argument("--processes", type=_processes, default=1, metavar="N",
                   help="runner processes (1-64; default 1): this one and N-1 more, each with its own connection")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(fn=cmd_serve)
    for name in ("timer", "runner", "dashboard", "watcher", "notifier"):
        p = sub.add_parser(name, help=f"run the {name} service (same as `serve {name}`)")
        if name == "runner":
            p.add_argument("--processes", type=_processes, default=1, metavar="N", help="runner processes (1-64)")
        p.add_argument("-v", "--verbose", action="store_true")
        p.set_defaults(fn=cmd_serve, services=[name])

    p = sub.add_parser("validate", parents=[common], help="check a config file; exit 2 listing every problem")
    p.add_argument("file")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("apply", parents=[common], help="apply a config to the running system (no restart)")
    p.add_argument("file")
    p.set_defaults(fn=cmd_apply)
    p = sub.add_parser("jobs", parents=[common], help="jobs with schedule, next run, last state, paused")
    p.set_defaults(fn=cmd_jobs)
    p = sub.add_parser("run", parents=[common], help="run a job now")
    p.add_argument("job")
    p.add_argument("--wait", type=_positive, metavar="SECONDS", help="wait for the outcome")
    p.set_defaults(fn=cmd_run)
    for name, paused in (("pause", True), ("resume", False)):
        p = sub.add_parser(name, parents=[common], help=f"{name} a job's schedule")
        p.add_argument("job")
        p.set_defaults(fn=lambda a, _p=paused: cmd_pause(a, _p))
    p = sub.add_parser("history", parents=[common], help="recent runs")
    p.add_argument("--job")
    p.add_argument("--state", choices=[s.value for s in RunState])
    p.add_argument("--since", type=_since, help="e.g. 2h, or 2026-11-27T06:00")
    p.add_argument("--limit", type=_limit, default=20)
    p.add_argument("--run-id", help="one run, with its attempts")
    p.set_defaults(fn=cmd_history)
    p = sub.add_parser("stats", parents=[common], help="run statistics per job and type")
    p.add_argument("--days", type=_positive, default=7.0)
    p.set_defaults(fn=cmd_stats)
    p = sub.add_parser("publish-file", parents=[common], help="announce complete files of a watch, as an upload "
                       "tool would (paths must lie inside the watch root)")
    p.add_argument("watch", metavar="WATCH")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files inside the watch root (use -- before names "
                   "starting with -)")
    p.set_defaults(fn=lambda a: _with_bus(a, lambda bus: cli_files.publish_files(bus, a)))
    cli_files.add_parser(sub, common, _since, _limit, _with_bus)  # files refused (issue 14)
    p = sub.add_parser("cleanup", parents=[common], help="delete history older than N days")
    p.add_argument("--older-than-days", type=_positive, required=True)
    p.set_defaults(fn=cmd_cleanup)
    cli_nats.add_parser(sub)
    cli_alerts.add_parsers(sub, common, _since, _limit, _with_bus)  # alerts, notify-test (issue 4)
    cli_health.add_parser(sub)  # healthcheck (issue 10)
    cli_replicas.add_parser(sub, common, _with_bus)  # replicas (issue 13)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "data_dir"):
        args.data_dir = None
    try:
        code: int = args.fn(args)
        return code
    except ConfigError as exc:
        _ = translator(exc.locale)
        print(_("invalid config: %(count)s problem(s)", count=len(exc.problems)), file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    except (UserError, ValidationError, DataDirError) as exc:
        print(f"cropcron: {exc}", file=sys.stderr)
        return 2
    except (CommandError, EmbeddedError, ServiceFailed, IncompatibleBroker, CredentialsError) as exc:
        print(f"cropcron: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:  # nats-py's request timeout is one (asyncio.TimeoutError is TimeoutError)
        # connected, but the broker did not answer a request in time: overloaded or restarting
        print("cropcron: the NATS server did not answer in time (it may be overloaded, starting or restarting); "
              "try again", file=sys.stderr)
        return 1
    except ServiceUnavailableError as exc:
        # JetStream's 503: a cluster with no meta leader yet (its nodes still starting) or without
        # a quorum; seen as a traceback from compose.cluster.yaml's `apply` while the nodes formed
        print(f"cropcron: NATS JetStream is not available ({exc.description}): a cluster that is starting or has "
              "lost its quorum; try again once enough of its nodes are up", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
