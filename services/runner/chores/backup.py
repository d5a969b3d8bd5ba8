"""The `backup_history` chore: a consistent dump of cropcron's own database (pg_dump takes one
snapshot for the whole dump) in pg_dump's custom format, which `pg_restore` reads, into a folder,
keeping the newest N.

The runner needs DATABASE_URL (`cropcron up` gives it to every service). pg_dump comes from the
same PostgreSQL build as the embedded server when that is installed (shared/pg_tools.py), and must
be at least as new as the server. The password goes to pg_dump in its environment, never on its
command line (where any user could read it). The dump is written as `<name>.partial` and renamed
once complete, so a dump that is there is whole.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

from services.runner.chores.errors import ChoreFailed
from services.runner.execute import run_command
from services.runner.reaper import Reaper
from shared.chores import BackupHistory
from shared.pg_tools import ToolNotFound, find_tool
from shared.settings import ServiceSettings

SUFFIX = ".dump"


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password, and the password (for PGPASSWORD)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)


async def server_major(url: str) -> int:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise ChoreFailed(f"cannot connect to the database: {type(exc).__name__}: {exc}") from None
    try:
        return int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()


def dumps(folder: Path, prefix: str) -> list[Path]:
    """This chore's dumps in `folder`, oldest first (by time written: two dumps within one second
    share the time in their names)."""
    found = [p for p in folder.glob(f"{prefix}-*{SUFFIX}") if p.is_file() and not p.is_symlink()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))


def _target(folder: Path, prefix: str, run_id: str, now: datetime) -> Path:
    name = f"{prefix}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    path = folder / f"{name}{SUFFIX}"
    return path if not path.exists() else folder / f"{name}-{run_id[:8]}{SUFFIX}"


def _prepare(folder: Path, prefix: str, run_id: str) -> Path:
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ChoreFailed(f"cannot create {folder}: {exc.strerror or exc}") from None
    return _target(folder, prefix, run_id, datetime.now(UTC))


def _finish(partial: Path, target: Path, chore: BackupHistory) -> tuple[list[str], list[str], int]:
    """Make the dump durable under its final name, then drop all but the newest `keep`."""
    os.chmod(partial, 0o600)  # the runs' output and errors are in it
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    partial.rename(target)
    removed = []
    for old in dumps(target.parent, chore.prefix)[:-chore.keep]:
        old.unlink(missing_ok=True)
        removed.append(old.name)
    return [p.name for p in dumps(target.parent, chore.prefix)], removed, target.stat().st_size


async def backup_history(chore: BackupHistory, settings: ServiceSettings, reaper: Reaper | None,
                         run_id: str) -> tuple[dict[str, Any], str]:
    url = settings.database_url
    if not url:
        raise ChoreFailed("this runner has no DATABASE_URL (cropcron up gives it to its services; with "
                          "compose, give it to the runner too)")
    major = await server_major(url)
    try:
        pg_dump = await asyncio.to_thread(find_tool, "pg_dump", major)
    except ToolNotFound as exc:
        raise ChoreFailed(str(exc)) from None
    folder = Path(chore.folder)
    target = await asyncio.to_thread(_prepare, folder, chore.prefix, run_id)
    partial = target.with_name(target.name + ".partial")
    dsn, password = split_password(url)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "10",
           **({"PGPASSWORD": password} if password else {})}
    argv = [str(pg_dump), "--format=custom", "--no-owner", "--no-privileges", f"--file={partial}", f"--dbname={dsn}"]
    try:  # the job's timeout cancels this, and pg_dump's process group is killed
        outcome = await run_command(argv, str(folder), env, 24 * 3600.0, settings.kill_grace, 20, reaper)
    except asyncio.CancelledError:
        partial.unlink(missing_ok=True)
        raise
    if not outcome.ok:
        partial.unlink(missing_ok=True)
        raise ChoreFailed(f"pg_dump {outcome.error}", outcome.output_tail)
    kept, removed, size = await asyncio.to_thread(_finish, partial, target, chore)
    result = {"file": str(target), "bytes": size, "kept": kept, "removed": removed, "pg_dump": str(pg_dump),
              "server_major": major}
    summary = f"dumped cropcron's history to {target} ({size} bytes) with {pg_dump}; kept {len(kept)}, " \
              f"removed {len(removed)}"
    return result, summary
