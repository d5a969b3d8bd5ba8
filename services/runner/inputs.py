"""What a file- or batch-triggered run receives besides the job's own fields, checked on the
runner's machine just before the run (RELIABILITY §5.3): the arrived file's path, re-resolved
inside its watch root, or a manifest file listing the batch's files. A path that leaves the root,
is a symlink/FIFO/device, vanished or changed size since it was announced is refused with a reason;
it never reaches a job.

Placeholders: `{file.path}` etc. are attribute lookups on the "file"/"batch" values here; each
fills part of one argv element. Byte paths become str with os.fsdecode, which the subprocess
module encodes back byte-exactly (surrogateescape), so non-UTF-8 names reach the job intact."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError
from pydantic import ValidationError

from shared import wire
from shared.config import JobSpec
from shared.events import BatchInfo, FileEvent, FileRef, Trigger
from shared.files import PathRefused, check_relative, rel_bytes, resolve_inside
from shared.names import subject_key
from shared.watch_config import WatchConfig, ZeroBytePolicy


@dataclass
class RunInputs:
    values: dict[str, Any]  # extra placeholder values ("file" or "batch")
    env: dict[str, str]
    data: dict[str, Any]  # extra RunContext.data for `call:` jobs
    refused: list[tuple[str, str]] = field(default_factory=list)  # batch files left out: (rel display, reason)
    tmpdir: str | None = None

    def close(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


def prepare(spec: JobSpec, trigger: Trigger, watches: dict[str, WatchConfig]) -> RunInputs | None:
    """None for triggers without file inputs; raises PathRefused with the reason."""
    if trigger.kind == "file":
        return _file_inputs(spec, trigger, watches)
    if trigger.kind == "batch":
        return _batch_inputs(spec, trigger, watches)
    return None


async def watches_for(js: JetStreamContext, watches: dict[str, WatchConfig], trigger: Trigger) -> dict[str, WatchConfig]:
    """The catalog's watches, plus the trigger's watch read from KV if it was applied a moment ago
    and the catalog has not caught up yet."""
    batch = trigger.data.get("batch")
    name = trigger.data.get("watch") if trigger.kind == "file" else batch.get("watch") if isinstance(batch, dict) else None
    if trigger.kind not in ("file", "batch") or not isinstance(name, str) or name in watches:
        return watches
    try:
        entry = await (await js.key_value(wire.KV_WATCHES)).get(subject_key(name))
    except (KeyNotFoundError, KeyDeletedError):
        return watches
    if not entry.value:
        return watches
    return {**watches, name: WatchConfig.model_validate_json(entry.value)}


def _watch(name: str, wanted: str | None, watches: dict[str, WatchConfig]) -> WatchConfig:
    if wanted != name:
        raise PathRefused(f"event of watch {name!r} does not belong to this job (it follows {wanted!r})")
    watch = watches.get(name)
    if watch is None:
        raise PathRefused(f"watch {name!r} is not in the applied config")
    return watch


def _checked(watch: WatchConfig, rel: bytes, size: int) -> bytes:
    path = resolve_inside(watch.path, rel, allow_empty=watch.zero_byte is ZeroBytePolicy.ACCEPT)
    info = os.lstat(path)
    if info.st_nlink > 1:
        # a hard link is the same file as another name, which may be outside the root (a canary,
        # /etc/...): a job writing to it would write there too (RELIABILITY §7.2 item 28)
        raise PathRefused(f"file has {info.st_nlink} hard links (another name may lie outside the watch root)")
    if info.st_size != size:
        # the announced version is gone (or a rewrite is still in progress); the new content is
        # announced as its own arrival once complete. Only the size is compared: an identical
        # rewrite or a `touch` changes the mtime but is, rightly, not announced again, so
        # refusing it would lose the file's only run.
        raise PathRefused(f"file changed since it was announced (size {size} -> {info.st_size} bytes)")
    return path


def file_of(trigger: Trigger) -> FileRef | None:
    """The file a file run is for, as its run events carry it (history and the run page show it);
    None for other runs, and for file details too malformed to name a file (the run is refused)."""
    if trigger.kind != "file":
        return None
    try:
        return FileRef.model_validate(trigger.data)  # the FileEvent's fields; the rest is ignored
    except ValidationError:
        return None


def _file_inputs(spec: JobSpec, trigger: Trigger, watches: dict[str, WatchConfig]) -> RunInputs:
    try:
        event = FileEvent.model_validate(trigger.data)
    except ValidationError as exc:
        raise PathRefused(f"malformed file details in the trigger: {exc.error_count()} problem(s)") from None
    watch = _watch(event.watch, spec.job.on_file, watches)
    rel = rel_bytes(event)
    path = _checked(watch, rel, event.size)
    text = {"path": os.fsdecode(path), "rel_path": os.fsdecode(rel), "name": os.fsdecode(os.path.basename(rel)),
            "size": str(event.size), "id": event.id, "watch": event.watch}
    env = {f"CROPCRON_FILE_{k.upper()}": v for k, v in text.items()}
    return RunInputs(values={"file": SimpleNamespace(**text)}, env=env, data={"path": text["path"]})


def _display(raw: bytes) -> dict[str, str]:
    """JSON cannot carry arbitrary bytes: text when UTF-8, else a display form plus the bytes."""
    try:
        return {"text": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"text": raw.decode("utf-8", "replace"), "b64": base64.b64encode(raw).decode()}


def _batch_inputs(spec: JobSpec, trigger: Trigger, watches: dict[str, WatchConfig]) -> RunInputs:
    try:
        batch = BatchInfo.model_validate(trigger.data.get("batch"))
    except ValidationError as exc:
        raise PathRefused(f"malformed batch details in the trigger: {exc.error_count()} problem(s)") from None
    rule = spec.job.on_batch
    watch = _watch(batch.watch, rule.watch if rule else None, watches)
    files: list[dict[str, Any]] = []
    refused: list[tuple[str, str]] = []
    folder = batch.folder  # display form; the exact bytes come from the files' own paths below
    for item in batch.files:
        try:
            rel = base64.b64decode(item.rel_path_b64, validate=True) if item.rel_path_b64 else item.rel_path.encode()
            check_relative(rel)
            path = _checked(watch, rel, item.size)
        except (PathRefused, ValueError) as exc:
            refused.append((item.rel_path, str(exc)))
            continue
        if batch.folder and not files:
            folder = os.fsdecode(rel.split(b"/", 1)[0])
        shown = _display(path)
        entry: dict[str, Any] = {"id": item.id, "rel_path": item.rel_path, "path": shown["text"],
                                 "size": item.size, "mtime_ns": item.mtime_ns}
        if item.rel_path_b64:
            entry["rel_path_b64"] = item.rel_path_b64
        if "b64" in shown:
            entry["path_b64"] = shown["b64"]
        files.append(entry)
    if not files:
        raise PathRefused(f"every file of batch {batch.id} was refused (first: {refused[0][1] if refused else 'none'})")
    manifest = {"batch_id": batch.id, "job": spec.name, "watch": batch.watch, "root": watch.path,
                "folder": batch.folder, "partial": batch.partial, "reason": batch.reason,
                "opened_at": batch.opened_at.isoformat(), "closed_at": batch.closed_at.isoformat(),
                "count": len(files), "files": files,
                "refused": [{"rel_path": r, "reason": why} for r, why in refused]}
    tmpdir = tempfile.mkdtemp(prefix="cropcron-batch-")
    manifest_path = os.path.join(tmpdir, f"{batch.id}.json")
    with open(manifest_path, "w", encoding="utf-8") as out:
        json.dump(manifest, out)
    text = {"manifest": manifest_path, "id": batch.id, "count": str(len(files)),
            "partial": "true" if batch.partial else "false", "folder": folder}
    env = {f"CROPCRON_BATCH_{k.upper()}": v for k, v in text.items()}
    return RunInputs(values={"batch": SimpleNamespace(**text)}, env=env, data={"manifest": manifest_path},
                     refused=refused, tmpdir=tmpdir)
