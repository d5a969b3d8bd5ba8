"""Built-in chores (`builtin:` in a job, instead of `run:` or `call:`): what each takes, validated
with pydantic, and the one rule every check of a cleanup folder goes through (`cleanup_refusal`),
used by `cropcron validate`/`apply` and again by the runner just before it deletes anything.

    builtin: {chore: cleanup_files, folder: data/flights, older_than: 30d, min_free: 20%}
    builtin: {chore: backup_history, folder: backups, keep: 14}
    builtin: {chore: digest, channels: [ops-mail], period: 1d}

The runner carries them out (services/runner/chores/) as ordinary runs: history, retries, timeout
and alerts are those of any job.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.durations import Duration
from shared.i18n import _

CHORES = ("backup_history", "cleanup_files", "digest")

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}


def parse_free(text: str) -> tuple[float, bool]:
    """"20%" -> (20.0, True); "5GiB" -> (5368709120.0, False). Raises ValueError naming the text."""
    value = text.strip()
    if value.endswith("%"):
        try:
            percent = float(value[:-1])
        except ValueError:
            percent = -1.0
        if not 0 < percent < 100:
            raise ValueError(f"expected a percentage between 0% and 100% (e.g. 20%), got {text!r}")
        return percent, True
    match = _SIZE.fullmatch(value)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(f"expected a size like 5GiB or 500MB, or a percentage like 20%, got {text!r}")
    return float(match.group(1)) * _UNITS[(match.group(2) or "").lower()], False


def free_target(text: str, total_bytes: int) -> int:
    """The free bytes `min_free` asks for on a file system of `total_bytes`."""
    amount, percent = parse_free(text)
    return int(total_bytes * amount / 100) if percent else int(amount)


class _Chore(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CleanupFiles(_Chore):
    """Delete files in `folder` (and below) older than `older_than`, and/or, oldest first, until
    the folder's file system has `min_free` free. Only regular files are deleted; symbolic links
    are never followed (nor deleted), nor other file systems mounted below the folder."""

    chore: Literal["cleanup_files"]
    folder: str = Field(min_length=1)  # relative: to the config file's directory
    older_than: Duration | None = None
    min_free: str | None = None  # "20%" of the file system, or a size: "5GiB"
    # never deleted, whatever the space: a file still being written or just arrived
    keep_newer_than: Duration = 3600.0
    include: list[str] = Field(default_factory=lambda: ["*"])  # file name patterns (fnmatch)
    dry_run: bool = False  # list what would go, delete nothing
    remove_empty_dirs: bool = False  # folders emptied by this run (never `folder` itself)

    @field_validator("min_free")
    @classmethod
    def _free(cls, value: str | None) -> str | None:
        if value is not None:
            parse_free(value)
        return value

    @field_validator("include")
    @classmethod
    def _include(cls, value: list[str]) -> list[str]:
        if not value or any(not p or "/" in p for p in value):
            raise ValueError("give file name patterns without '/', e.g. ['*.jpg', '*.tif']")
        return value

    @model_validator(mode="after")
    def _something(self) -> CleanupFiles:
        if self.older_than is None and self.min_free is None:
            raise ValueError("give older_than (e.g. 30d), min_free (e.g. 20% or 5GiB), or both")
        return self


class BackupHistory(_Chore):
    """A pg_dump (custom format: `pg_restore` reads it) of cropcron's own database into `folder`,
    named with the time; the newest `keep` are kept."""

    chore: Literal["backup_history"]
    folder: str = Field(min_length=1)  # relative: to the config file's directory
    keep: int = Field(7, ge=1, le=1000)
    prefix: str = Field("cropcron-history", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Digest(_Chore):
    """A summary of the last `period` sent to notification channels: runs by job and state,
    failures with links, files and flights received, disk space, overdue jobs; with a chart."""

    chore: Literal["digest"]
    channels: list[str] = Field(min_length=1)  # names under notifications.channels
    period: Duration = 86400.0  # 1d: daily; 7d: weekly
    # folders whose file systems' free space is shown; default: the watch roots and cleanup roots
    disks: list[str] = Field(default_factory=list)
    max_failures: int = Field(20, ge=0, le=200)  # failures listed (all are counted)
    title: str | None = Field(None, max_length=120)

    @field_validator("period")
    @classmethod
    def _period(cls, value: float) -> float:
        if not 3600 <= value <= 31 * 86400:
            raise ValueError("must be between 1h and 31d")
        return value


Builtin = Annotated[CleanupFiles | BackupHistory | Digest, Field(discriminator="chore")]


def absolute(path: str, base: str | Path) -> str:
    """`path` made absolute against `base` and normalised, symlinks left as they are."""
    p = Path(os.path.expanduser(path))
    return os.path.normpath(p if p.is_absolute() else Path(base) / p)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def cleanup_refusal(folder: str, roots: list[str], check_disk: bool = True) -> str | None:
    """Why files in `folder` must not be deleted, or None. Both are absolute. The folder must not
    be `/`, and must lie under one of `roots` both as written and with every symbolic link
    resolved (a link inside a root that points elsewhere is an escape). With `check_disk`, paths
    that exist are resolved; one that does not exist yet is judged as written."""
    if not roots:
        return _("no cleanup roots are configured: list the folders cleanup may touch in system.cleanup_roots")
    folder = os.path.normpath(folder)
    if folder == "/":
        return _("refusing to clean up /: name a folder under one of system.cleanup_roots")
    roots = [os.path.normpath(r) for r in roots]
    if not any(_under(folder, r) for r in roots):
        return _("%(folder)s is outside the cleanup roots (%(roots)s); add a root to system.cleanup_roots or "
                 "choose a folder under one", folder=folder, roots=", ".join(roots))
    if not check_disk:
        return None
    real = os.path.realpath(folder)
    real_roots = [os.path.realpath(r) for r in roots]
    if real == "/":
        return _("refusing to clean up %(folder)s: it resolves to /", folder=folder)
    if not any(_under(real, r) for r in real_roots if r != "/"):
        return _("%(folder)s resolves through a symbolic link to %(real)s, outside the cleanup roots",
                 folder=folder, real=real)
    return None


def chore_problems(chores: list[tuple[str, CleanupFiles | BackupHistory | Digest]], roots: list[str],
                   channels: set[str] | None, base_dir: Path | None) -> list[str]:
    """What is wrong with the jobs' chores as a whole config: a cleanup folder that may not be
    cleaned (`/`, outside the roots, or escaping them through a symbolic link), a digest sent to
    a channel that is not configured. Without `base_dir`, relative and absolute paths cannot be
    compared and nothing is resolved on disk: what cannot be judged is left to `apply` and the
    runner, which check again."""
    problems: list[str] = []
    for name, chore in chores:
        where = _("job %(name)s: %(where)s", name=repr(name), where=_("field '%(field)s'", field="builtin"))
        if isinstance(chore, CleanupFiles):
            if base_dir is not None:
                folder = absolute(chore.folder, base_dir)
                full_roots = [absolute(r, base_dir) for r in roots]
            elif all(os.path.isabs(p) == os.path.isabs(chore.folder) for p in roots):
                folder, full_roots = absolute(chore.folder, "/."), [absolute(r, "/.") for r in roots]
            elif os.path.normpath(chore.folder) == "/" or not roots:
                folder, full_roots = "/", roots
            else:
                continue
            problem = cleanup_refusal(folder, full_roots, check_disk=base_dir is not None)
            if problem:
                problems.append(f"{where}: {problem}")
        elif isinstance(chore, Digest) and channels is not None:
            for channel in chore.channels:
                if channel not in channels:
                    problems.append(f"{where}: " + _("digest channel %(channel)s is not configured; known: %(known)s",
                                                     channel=repr(channel), known=", ".join(sorted(channels))
                                                     or _("none (add it under notifications.channels)")))
    return problems
