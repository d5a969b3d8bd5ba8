"""Finding PostgreSQL's client programs (pg_dump, pg_restore) for a server of a given version,
without importing cropcron/ (the embedded Postgres lives there) nor pgserver (its import makes
lock files): CROPCRON_PG_BIN_DIR, then the build inside the installed pgserver package (the one
`cropcron up` runs), then PATH. pg_dump refuses a server newer than itself, so a candidate older
than the server is passed over."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

BIN_DIR_ENV = "CROPCRON_PG_BIN_DIR"


class ToolNotFound(Exception):
    """No usable program; the message says what was tried."""


def candidates(program: str) -> list[Path]:
    found: list[Path] = []
    configured = os.environ.get(BIN_DIR_ENV)
    if configured:
        found.append(Path(configured) / program)
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        found.append(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / program)
    on_path = shutil.which(program)
    if on_path:
        found.append(Path(on_path))
    return [p for p in dict.fromkeys(found) if p.is_file() and os.access(p, os.X_OK)]


def major_version(program: Path) -> int | None:
    """16 for "pg_dump (PostgreSQL) 16.4"; None when it does not say."""
    try:
        out = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\)\s+(\d+)", out.stdout)
    return int(match.group(1)) if match else None


def find_tool(program: str, server_major: int) -> Path:
    """The first candidate at least as new as the server."""
    tried = []
    for path in candidates(program):
        major = major_version(path)
        if major is not None and major >= server_major:
            return path
        tried.append(f"{path} (version {major})")
    raise ToolNotFound(f"no {program} for PostgreSQL {server_major} or newer; tried: {', '.join(tried) or 'none'} "
                       f"(set {BIN_DIR_ENV} to a PostgreSQL bin/ directory)")
