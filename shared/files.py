"""Files inside a watch root: building a FileEvent from a file on disk, and the path checks every
reader of a FileEvent makes before touching the file (RELIABILITY §5.3: CWE-22 traversal,
symlink escapes, non-regular files). Paths are handled as bytes so that any name the file
system allows, UTF-8 or not, round-trips exactly."""

from __future__ import annotations

import base64
import os
import stat
from datetime import datetime

from shared.events import FileEvent, file_event_id, utcnow


class PathRefused(ValueError):
    """A path that must not be acted on; the message says why (it goes into a `rejected` event)."""


def rel_bytes(event: FileEvent) -> bytes:
    """The exact relative path: the base64 bytes when present, else the UTF-8 text."""
    if event.rel_path_b64 is not None:
        try:
            return base64.b64decode(event.rel_path_b64, validate=True)
        except ValueError:
            raise PathRefused("rel_path_b64 is not valid base64") from None
    return event.rel_path.encode("utf-8", "surrogateescape")


def check_relative(rel: bytes) -> None:
    """Refuse what could leave the root before the file system is even asked."""
    if not rel:
        raise PathRefused("empty relative path")
    if b"\0" in rel:
        raise PathRefused("relative path contains a NUL byte")
    if rel.startswith(b"/"):
        raise PathRefused("relative path is absolute")
    if any(part in (b"..", b".") for part in rel.split(b"/")):
        raise PathRefused("relative path contains '.' or '..' components")


def resolve_inside(root: str, rel: bytes, *, allow_empty: bool = True) -> bytes:
    """The file's absolute path (bytes) if it is a regular file inside `root`, reached without
    following a symlink out of it; raises PathRefused otherwise. The root itself may be a symlink
    (a mount point): it is resolved once, and the file must resolve inside that."""
    check_relative(rel)
    root_b = os.fsencode(root)
    try:
        real_root = os.path.realpath(root_b, strict=True)
    except OSError as exc:
        raise PathRefused(f"watch root {root!r} is not available: {exc.strerror}") from None
    candidate = os.path.join(real_root, rel)
    try:
        info = os.lstat(candidate)
    except FileNotFoundError:
        raise PathRefused("file no longer exists (vanished before it could be used)") from None
    except OSError as exc:
        raise PathRefused(f"cannot stat file: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise PathRefused("file is a symbolic link (links are never followed)")
    if not stat.S_ISREG(info.st_mode):
        raise PathRefused(f"not a regular file ({_kind(info.st_mode)})")
    real = os.path.realpath(candidate)
    if os.path.commonpath([real, real_root]) != real_root:
        raise PathRefused("path leaves the watch root (through a symlinked directory)")
    if not allow_empty and info.st_size == 0:
        raise PathRefused("file is empty (zero bytes)")
    return real


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "unknown type"


def event_for(watch: str, root: str, rel: bytes, info: os.stat_result, *, source: str = "watcher",
              sha256: str | None = None, detected_at: datetime | None = None) -> FileEvent:
    """The FileEvent for one version (size, mtime) of a file at `rel` under `root`."""
    try:
        rel_text, rel_b64 = rel.decode("utf-8"), None
    except UnicodeDecodeError:
        rel_text, rel_b64 = rel.decode("utf-8", "replace"), base64.b64encode(rel).decode()
    path = os.path.join(os.fsencode(root), rel).decode("utf-8", "replace")
    return FileEvent(
        id=file_event_id(watch, rel, info.st_size, info.st_mtime_ns),
        watch=watch, path=path, rel_path=rel_text, rel_path_b64=rel_b64, size=info.st_size,
        mtime_ns=info.st_mtime_ns, detected_at=detected_at or utcnow(), sha256=sha256, source=source)
