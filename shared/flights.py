"""Open flight batches as KV keeps them (wire.KV_BATCHES), shared by the dispatcher that writes
them (services/watcher/batches.py) and the dashboard that shows them ("open" on the Flights page):

- "h.<batch id>": the header, {"id", "job", "watch", "opened_at" (unix seconds), "group_b64"};
- "f.<batch id>.<file id>": one file, {"file": BatchFile, "at" (unix seconds it joined)}.

A closed flight is purged from the bucket; history keeps it (cropcron.history.flights)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from shared.events import BatchFile
from shared.i18n import N_

# why the watcher refused a file (services/watcher/files.py, shared/files.py): the fixed reasons,
# shown in the farm's language by the dashboard and `cropcron files refused`; others (with a count
# or an OS error in them) are shown as written
REFUSAL_REASONS = (
    N_("file is empty (zero bytes; policy zero_byte: reject)"), N_("file is empty (zero bytes)"),
    N_("file is a symbolic link (links are never followed)"),
    N_("path leaves the watch root (through a symlinked directory)"),
    N_("not a regular file (replaced while being checked)"), N_("relative path contains '.' or '..' components"))


class BatchHeader(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    job: str
    watch: str
    opened_at: float
    group_b64: str = ""

    @property
    def group(self) -> bytes:
        return base64.b64decode(self.group_b64)

    @property
    def folder(self) -> str:
        return self.group.decode("utf-8", "replace")


def header_bytes(batch_id: str, job: str, watch: str, opened_at: float, group: bytes) -> bytes:
    return json.dumps({"id": batch_id, "job": job, "watch": watch, "opened_at": opened_at,
                       "group_b64": base64.b64encode(group).decode()}).encode()


def parse_header(raw: bytes) -> BatchHeader:
    return BatchHeader.model_validate_json(raw)


def file_entry(file: BatchFile, at: float) -> bytes:
    return json.dumps({"file": file.model_dump(mode="json", exclude_none=True), "at": at}).encode()


def parse_file_entry(raw: bytes) -> tuple[BatchFile, float]:
    data: dict[str, Any] = json.loads(raw)
    return BatchFile.model_validate(data["file"]), float(data["at"])


def size_text(value: float | None) -> str:
    """Bytes for people: 812 B, 4.2 MB (decimal units, as file managers show them)."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def open_flights(entries: dict[str, bytes], watch: str | None = None) -> list[dict[str, Any]]:
    """The open batches in a KV_BATCHES listing (key -> value, in the order written), newest first,
    shaped like history's closed flights with state "open" and the files so far (each with
    `position` and `detected_at`, the time it joined). Unreadable entries are skipped."""
    headers: dict[str, BatchHeader] = {}
    files: dict[str, list[tuple[BatchFile, float]]] = {}
    for key, value in entries.items():
        try:
            if key.startswith("h."):
                header = parse_header(value)
                headers[header.id] = header
            elif key.startswith("f.") and key.count(".") >= 2:
                files.setdefault(key.split(".")[1], []).append(parse_file_entry(value))
        except (ValueError, KeyError, TypeError):
            continue
    out = []
    for header in headers.values():
        got = files.get(header.id, [])
        if not got or (watch is not None and header.watch != watch):
            continue  # no files: closed, its purge not finished
        arrivals = [at for _, at in got]
        out.append({
            "id": header.id, "job": header.job, "watch": header.watch, "folder": header.folder, "partial": False,
            "reason": None, "opened_at": _iso(header.opened_at), "closed_at": None, "files": len(got),
            "bytes": sum(f.size for f, _ in got), "state": "open", "run_state": None, "run_attempt": None,
            "run_finished_at": None, "first_arrival": _iso(min(arrivals)), "last_arrival": _iso(max(arrivals)),
            "file_list": [{"position": i, "id": f.id, "rel_path": f.rel_path, "size": f.size, "detected_at": _iso(at)}
                          for i, (f, at) in enumerate(got)],
        })
    out.sort(key=lambda f: (f["opened_at"], f["id"]), reverse=True)
    return out
