"""Where cropcron keeps its data by default (`cropcron up`'s data dir; the watcher's record lives
under it). Imports nothing heavy: `python -m cropcron up` reads it before the CLI's imports."""

from __future__ import annotations

import os
from pathlib import Path

ROOT_DATA_DIR = Path("/var/lib/cropcron")


def default_data_dir() -> Path:
    """CROPCRON_DATA_DIR, else /var/lib/cropcron for root (the embedded Postgres runs as an
    unprivileged user, which must be able to reach it: /root is usually private), else
    $XDG_DATA_HOME/cropcron or ~/.local/share/cropcron."""
    env = os.environ.get("CROPCRON_DATA_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return ROOT_DATA_DIR
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cropcron"
