"""The `cleanup_files` chore: delete files in a folder older than an age and/or, oldest first,
until its file system has a given free space.

Never outside the folder: the folder is checked against the cleanup roots (links resolved) just
before the run; the tree is then read and changed only through directory file descriptors opened
with O_NOFOLLOW, one component at a time, so a directory swapped for a symbolic link between the
scan and the deletion is refused, not followed. Only regular files are deleted; links and other
file systems mounted below the folder are left alone (deleting there would free nothing here).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.chores import CleanupFiles, cleanup_refusal, free_target

LISTED = 500  # paths listed in the run's result (all are counted)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class CleanupRefused(Exception):
    """The folder may not be cleaned; the message says why."""


@dataclass(order=True)
class Candidate:
    mtime: float
    rel: str  # relative to the folder, "/"-separated
    size: int = field(compare=False)
    ino: int = field(compare=False)


@dataclass
class Report:
    folder: str
    dry_run: bool
    deleted: list[str] = field(default_factory=list)
    count: int = 0
    freed: int = 0
    free_before: int = 0
    free_after: int = 0
    target_free: int | None = None
    skipped: list[str] = field(default_factory=list)  # changed or gone since the scan, or refused
    removed_dirs: int = 0

    def result(self) -> dict[str, Any]:
        return {"folder": self.folder, "dry_run": self.dry_run, "deleted_count": self.count,
                "deleted": self.deleted[:LISTED], "deleted_listed": min(len(self.deleted), LISTED),
                "freed_bytes": self.freed, "free_before": self.free_before, "free_after": self.free_after,
                "target_free": self.target_free,
                "target_met": None if self.target_free is None else self.free_after >= self.target_free,
                "skipped": self.skipped[:50], "removed_dirs": self.removed_dirs}

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        line = f"{verb} {self.count} file(s), {self.freed} bytes in {self.folder}; free {self.free_before} -> " \
               f"{self.free_after} bytes"
        if self.target_free is not None:
            line += f" (target {self.target_free}: {'met' if self.free_after >= self.target_free else 'NOT met'})"
        return "\n".join([line, *(f"  {p}" for p in self.deleted[:20])]
                         + ([f"  ... and {self.count - 20} more"] if self.count > 20 else []))


def _free(fd: int) -> tuple[int, int]:
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _scan(fd: int, dev: int, prefix: str, patterns: list[str], out: list[Candidate], stop: threading.Event) -> None:
    with os.scandir(fd) as entries:
        items = list(entries)
    for entry in items:
        if stop.is_set():
            return
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        rel = f"{prefix}{entry.name}"
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev != dev:
                continue  # another file system mounted here
            try:
                sub = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                _scan(sub, dev, rel + "/", patterns, out, stop)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode) and any(fnmatch.fnmatch(entry.name, p) for p in patterns):
            out.append(Candidate(st.st_mtime, rel, st.st_blocks * 512 if st.st_blocks else st.st_size, st.st_ino))


@contextlib.contextmanager
def _parent(root: int, rel: str) -> Iterator[tuple[int, str]]:
    """The directory holding `rel`, opened component by component without following links."""
    *dirs, name = rel.split("/")
    opened: list[int] = []
    fd = root
    try:
        for part in dirs:
            fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            opened.append(fd)
        yield fd, name
    finally:
        for item in opened:
            os.close(item)


def _delete(root: int, c: Candidate) -> bool:
    """Unlink one scanned file if it is still that same regular file; False if not."""
    try:
        with _parent(root, c.rel) as (fd, name):
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_ino != c.ino or st.st_mtime != c.mtime:
                return False
            os.unlink(name, dir_fd=fd)
            return True
    except OSError:
        return False


def _remove_empty_dirs(root: int, rels: set[str]) -> int:
    """Folders that held deleted files, deepest first, if now empty (never the folder itself)."""
    removed = 0
    dirs: set[str] = set()
    for rel in rels:
        parts = rel.split("/")[:-1]
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
        with contextlib.suppress(OSError), _parent(root, rel) as (fd, name):
            os.rmdir(name, dir_fd=fd)
            removed += 1
    return removed


def cleanup(chore: CleanupFiles, roots: list[str], stop: threading.Event | None = None,
            now: float | None = None) -> Report:
    """Carry out one cleanup (blocking: the runner calls it in a thread). `chore.folder` and
    `roots` are absolute (as applied). Raises CleanupRefused. Setting `stop` ends it early."""
    stop = stop or threading.Event()
    now = time.time() if now is None else now
    problem = cleanup_refusal(chore.folder, roots)
    if problem:
        raise CleanupRefused(problem)
    real = os.path.realpath(chore.folder)  # judged under a root just above (a link within one is fine)
    try:
        root = os.open(real, DIR_FLAGS)
    except FileNotFoundError:
        raise CleanupRefused(f"folder {chore.folder} does not exist") from None
    except OSError as exc:
        raise CleanupRefused(f"cannot open folder {chore.folder}: {exc.strerror or exc}") from None
    try:
        # the descriptor is what is cleaned: it must still be the folder judged above (a component
        # swapped for a link in between would land elsewhere)
        if os.readlink(f"/proc/self/fd/{root}") != real:
            raise CleanupRefused(f"folder {chore.folder} changed while it was opened")
        return _run(chore, root, stop, now)
    finally:
        os.close(root)


def _run(chore: CleanupFiles, root: int, stop: threading.Event, now: float) -> Report:
    report = Report(folder=chore.folder, dry_run=chore.dry_run)
    files: list[Candidate] = []
    _scan(root, os.fstat(root).st_dev, "", chore.include, files, stop)
    files.sort()  # oldest first
    free, total = _free(root)
    report.free_before = free
    if chore.min_free is not None:
        report.target_free = free_target(chore.min_free, total)
    keep_from = now - chore.keep_newer_than
    old_from = now - chore.older_than if chore.older_than is not None else None
    projected = free
    for c in files:
        if stop.is_set():
            break
        if c.mtime > keep_from:
            break  # sorted: every later file is newer still
        old = old_from is not None and c.mtime < old_from
        short = report.target_free is not None and projected < report.target_free
        if short is False and report.target_free is not None and not chore.dry_run and not old:
            projected = _free(root)[0]  # the estimate says enough: ask the file system
            short = projected < report.target_free
        if not (old or short):
            break  # neither old nor needed for space, and every later file is newer
        if not chore.dry_run and not _delete(root, c):
            report.skipped.append(c.rel)
            continue
        report.deleted.append(c.rel)
        report.count += 1
        report.freed += c.size
        projected += c.size
    if chore.remove_empty_dirs and not chore.dry_run and report.deleted:
        report.removed_dirs = _remove_empty_dirs(root, set(report.deleted))
    report.free_after = projected if chore.dry_run else _free(root)[0]
    return report
