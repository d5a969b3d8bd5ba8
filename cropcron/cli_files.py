"""`cropcron publish-file WATCH PATH...`: announce complete files, as a drone upload tool would
(docs/events.md "File arrivals"). For scripts that finish an upload by other means (rsync, a card
reader) and for re-announcing a file by hand.

Every PATH must be a regular file inside the watch's root (read from the applied config in KV),
reached without a symlink out of it; otherwise nothing is published and the command exits 2 naming
each refused path. The watch's extension and ignore filters are not applied: naming a file is an
explicit choice. Ids are deterministic, so announcing a file twice is harmless."""

from __future__ import annotations

import argparse
import os
import sys

from nats.js.errors import KeyDeletedError, KeyNotFoundError

from cropcron.tables import print_json
from shared import wire
from shared.bus import Bus, publish_all
from shared.catalog import read_watches
from shared.errors import CommandError, UserError
from shared.events import FileEvent
from shared.files import PathRefused, event_for, resolve_inside
from shared.i18n import _
from shared.names import normalise_name, subject_key
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
