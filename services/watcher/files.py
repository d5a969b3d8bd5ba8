"""What the watcher does with one path on disk, without the bus: which names a watch wants, the
tree listing used by scans, and the examination of a file judged complete (kind, zero bytes,
content hash). All of it runs in worker threads (blocking I/O) and works on bytes paths, so any
name the file system allows round-trips exactly."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
from dataclasses import dataclass

from shared.files import PathRefused, resolve_inside
from shared.watch_config import WatchConfig, ZeroBytePolicy

CHUNK = 1 << 20


class NameFilter:
    """Extensions apply to the final name; ignore patterns to every path component (so a file in
    `flight1.part/` or in a dot-directory is ignored as well). The patterns are compiled into one
    regular expression: a scan tests 100,000 names."""

    def __init__(self, watch: WatchConfig) -> None:
        self.recursive = watch.recursive
        self.extensions = tuple(e.encode() for e in watch.extensions)
        joined = "|".join(f"(?:{fnmatch.translate(p)})" for p in watch.ignore)
        self._ignore = re.compile(os.fsencode(joined)) if joined else None

    def ignored_component(self, name: bytes) -> bool:
        return self._ignore is not None and self._ignore.match(name) is not None

    def wants_name(self, name: bytes) -> bool:
        """The final name alone (its folders were already checked while descending)."""
        return not self.ignored_component(name) and (not self.extensions or name.lower().endswith(self.extensions))

    def wants(self, rel: bytes) -> bool:
        parts = rel.split(b"/")
        if not self.recursive and len(parts) > 1:
            return False
        return not any(self.ignored_component(p) for p in parts[:-1]) and self.wants_name(parts[-1])


def rel_of(root: bytes, path: bytes) -> bytes | None:
    """`path` relative to `root`, or None if it is the root itself or outside it."""
    prefix = root.rstrip(b"/") + b"/"
    return path[len(prefix):] if path.startswith(prefix) and len(path) > len(prefix) else None


@dataclass(frozen=True, slots=True)
class Entry:
    """One name found by a scan (lstat: links are never followed)."""

    rel: bytes
    regular: bool
    size: int
    mtime_ns: int
    ctime_ns: int


def list_tree(root: bytes, names: NameFilter, start: bytes = b"") -> list[Entry]:
    """Every wanted name under root (or under root/start). Directories are descended only if the
    watch is recursive and never through a symlink; raises OSError if the root itself is gone."""
    out: list[Entry] = []
    if start and (not names.recursive or any(names.ignored_component(p) for p in start.split(b"/"))):
        return out  # an ignored folder, or any folder of a flat watch: nothing in it is wanted
    stack = [start]
    while stack:
        sub = stack.pop()
        try:
            it = os.scandir(os.path.join(root, sub) if sub else root)
        except (FileNotFoundError, NotADirectoryError):
            if not sub:
                raise
            continue  # a subdirectory removed while we walked
        with it:
            for entry in it:
                rel = sub + b"/" + entry.name if sub else entry.name
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if names.recursive and not names.ignored_component(entry.name):
                        stack.append(rel)
                    continue
                if names.wants_name(entry.name):
                    out.append(Entry(rel, stat.S_ISREG(info.st_mode), info.st_size, info.st_mtime_ns,
                                     info.st_ctime_ns))
    return out


@dataclass(frozen=True, slots=True)
class Examined:
    """The verdict on one file judged complete. Exactly one of the outcomes is set:
    publish (sha256 set), reject (reason set), vanished, changed (still being written) or
    unchanged (the version already announced: nothing was read)."""

    rel: bytes
    info: os.stat_result | None = None
    sha256: str | None = None
    reason: str | None = None
    vanished: bool = False
    changed: bool = False
    unchanged: bool = False


def examine(root: str, rel: bytes, zero_byte: ZeroBytePolicy, known: tuple[int, int] | None = None) -> Examined:
    """Check the file at root/rel and hash it, unless its (size, mtime) is `known`: the version
    already announced is never read again (a close without a write, a repeated event)."""
    if known is not None:
        info = _lstat(root, rel)
        if info is not None and stat.S_ISREG(info.st_mode) and (info.st_size, info.st_mtime_ns) == known:
            return Examined(rel, info=info, unchanged=True)
    try:
        path = resolve_inside(root, rel)
    except PathRefused as exc:
        if "no longer exists" in str(exc):
            return Examined(rel, vanished=True)
        info = _lstat(root, rel)
        return Examined(rel, info=info, reason=str(exc))
    info = _lstat(root, rel)
    if info is not None and info.st_nlink > 1:
        # the runner refuses these too (services/runner/inputs.py): the same file under another
        # name, possibly outside the root; announcing it would only produce a refused run
        return Examined(rel, info=info, reason=f"file has {info.st_nlink} hard links "
                                               "(another name may lie outside the watch root)")
    if zero_byte is ZeroBytePolicy.REJECT and info is not None and info.st_size == 0:
        return Examined(rel, info=info, reason="file is empty (zero bytes; policy zero_byte: reject)")
    try:
        return _hash(rel, path)
    except FileNotFoundError:
        return Examined(rel, vanished=True)
    except OSError as exc:
        return Examined(rel, info=_lstat(root, rel), reason=f"cannot read file: {exc.strerror or exc}")


def _hash(rel: bytes, path: bytes) -> Examined:
    # O_NOFOLLOW: a symlink swapped in after the check is refused; O_NONBLOCK: a FIFO swapped in
    # cannot hang the thread
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            return Examined(rel, info=before, reason="not a regular file (replaced while being checked)")
        digest = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        return Examined(rel, info=after, changed=True)  # written to while we read: not complete
    return Examined(rel, info=before, sha256=digest.hexdigest())


def _lstat(root: str, rel: bytes) -> os.stat_result | None:
    try:
        return os.lstat(os.path.join(os.fsencode(root), rel))
    except OSError:
        return None
