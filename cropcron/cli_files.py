"""`cropcron publish-file WATCH PATH...`: announce complete files, as a drone upload tool would
(docs/events.md "File arrivals"). For scripts that finish an upload by other means (rsync, a card
reader) and for re-announcing a file by hand. And `cropcron files refused`: the files the watcher
refused (zero bytes, a symlink, outside the root, ...), with the reason, from history.

Every PATH must be a regular file inside the watch's root (read from the applied config in KV),
reached without a symlink out of it; otherwise nothing is published and the command exits 2 naming
each refused path. The watch's extension and ignore filters are not applied: naming a file is an
explicit choice. Ids are deterministic, so announcing a file twice is harmless."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from nats.js.errors import KeyDeletedError, KeyNotFoundError

from cropcron import commands
from cropcron.tables import print_json, print_table
from shared import wire
from shared.bus import Bus, publish_all
from shared.catalog import read_watches
from shared.errors import CommandError, UserError
from shared.events import FileEvent
from shared.files import PathRefused, event_for, resolve_inside
from shared.flights import REFUSAL_REASONS
from shared.i18n import Translator, _
from shared.names import normalise_name, subject_key
from shared.queries import RefusedQuery
from shared.watch_config import WatchConfig, ZeroBytePolicy


async def read_watch(bus: Bus, name: str) -> WatchConfig:
    kv = await bus.js.key_value(wire.KV_WATCHES)
    name = normalise_name(name)
    try:
        entry = await kv.get(subject_key(name))
    except (KeyNotFoundError, KeyDeletedError):
        entry = None
    if entry is None or not entry.value:
        try:
            known = ", ".join(sorted(await read_watches(bus.js))) or _("none")
        except Exception:
            known = _("none")
        raise UserError(_("unknown watch %(name)s (applied watches: %(known)s)", name=repr(name), known=known))
    return WatchConfig.model_validate_json(entry.value)


def relative_inside(root: str, path: str) -> bytes:
    """PATH (absolute, or relative to the current directory) as a path relative to the root. The
    directories are resolved (a symlinked root or mount point is fine); the file itself is not,
    so a symlink named inside the root is refused later rather than followed."""
    try:
        real_root = os.path.realpath(os.fsencode(root), strict=True)
    except OSError as exc:
        raise UserError(f"watch root {root!r} is not available: {exc.strerror}") from None
    absolute = os.path.abspath(os.fsencode(path))
    parent, name = os.path.split(absolute)
    full = os.path.join(os.path.realpath(parent), name)
    if full == real_root or os.path.commonpath([full, real_root]) != real_root:
        raise PathRefused(f"not inside the watch root {root}")
    return os.path.relpath(full, real_root)


def build_events(watch: WatchConfig, paths: list[str]) -> list[FileEvent]:
    events, problems = [], []
    for path in paths:
        try:
            rel = relative_inside(watch.path, path)
            real = resolve_inside(watch.path, rel, allow_empty=watch.zero_byte is ZeroBytePolicy.ACCEPT)
            events.append(event_for(watch.name, watch.path, rel, os.lstat(real), source="publish-file"))
        except PathRefused as exc:
            problems.append(f"{path}: {exc}")
    if problems:
        raise UserError("nothing published; refused:\n  " + "\n  ".join(problems))
    return events


async def publish_files(bus: Bus, args: argparse.Namespace) -> int:
    watch = await read_watch(bus, args.watch)
    events = build_events(watch, args.paths)
    items = [(wire.file_subject(e.watch), e.to_bytes(), e.id) for e in events]
    failed = await publish_all(bus, items)
    if failed:
        raise CommandError(f"{len(failed)} of {len(items)} events were not acknowledged by NATS; "
                           "run the command again (ids are deterministic, nothing is duplicated)")
    if args.json:
        print_json([e.model_dump(mode="json", exclude_none=True) for e in events])
    else:
        for event in events:
            sys.stdout.write(f"{event.id}  {event.rel_path}\n")
    return 0


async def refused(bus: Bus, args: argparse.Namespace) -> int:
    """`cropcron files refused`: newest first; a watch must be one applied (a typo is named)."""
    watch = (await read_watch(bus, args.watch)).name if args.watch else None
    query = RefusedQuery(watch=watch, since=args.since, limit=args.limit, offset=0)
    rows: list[dict[str, Any]] = await commands.request(bus, wire.HISTORY_REFUSED, query)
    if args.json:
        print_json(rows)
        return 0
    words: Translator = args.words  # the farm's language (`_` follows it too, set by `using`)
    if not rows:
        sys.stdout.write(_("no refused files") + "\n")
        return 0
    at = (lambda v: v) if words.locale == "en" else (lambda v: words.when(v, args.tz))
    known = set(REFUSAL_REASONS)
    print_table([_("at"), _("watch"), _("path"), _("reason")],
                [[at(r["at"]), r["watch"], r["path"], _(r["reason"]) if r["reason"] in known else r["reason"]]
                 for r in rows])
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """A bad argument is one line naming it (`cropcron files refused: argument --limit: ...`), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n")


def add_parser(sub: Any, common: argparse.ArgumentParser, since: Callable[[str], Any],
               limit: Callable[[str], int], with_bus: Callable[..., int]) -> None:
    p = sub.add_parser("files", help="uploaded files: `files refused` lists the files the watcher refused")
    files = p.add_subparsers(dest="files_command", required=True, metavar="WHAT", parser_class=_OneLineParser)
    r = files.add_parser("refused", parents=[common], help="files the watcher refused (zero bytes, symlinks, "
                         "outside the root, ...) with the reason, newest first")
    r.add_argument("--watch", help="one watch (as applied)")
    r.add_argument("--since", type=since, help="e.g. 2h, or 2026-11-27T06:00")
    r.add_argument("--limit", type=limit, default=50, help="at most this many (1-10000, default 50)")
    r.set_defaults(fn=lambda a: with_bus(a, lambda bus: refused(bus, a)))
