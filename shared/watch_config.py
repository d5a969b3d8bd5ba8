"""Config for folder watches (`folder_watches:`) and for jobs triggered by files (`on_file`,
`on_batch`). The prototype's format (path, extensions, recursive) extended with a name, ignore
patterns, a detection mode and the completeness rules (docs/config.md)."""

from __future__ import annotations

import re
from datetime import time
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.durations import Duration
from shared.names import check_name, normalise_name


class WatchMode(StrEnum):
    EVENTS = "events"  # inotify: a file counts once closed after writing or moved into the tree
    POLLING = "polling"  # network mounts (no inotify for remote writes): size and mtime settle


class ZeroBytePolicy(StrEnum):
    REJECT = "reject"  # an empty file is reported as rejected (an upload that produced nothing)
    ACCEPT = "accept"  # an empty file is an arrival like any other


_CLOCK_RE = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


class Expectation(BaseModel):
    """`expect:` on a watch or an `on_batch` (issue 14): what data should arrive each day. The
    notifier raises `no_uploads` when fewer than `flights_per_day` flights have come by `by` (the
    farm's time zone, system.timezone), and `incomplete_flight` for a closed flight below
    `min_files` or closed partial; each resolves when data arrives (docs/notifications.md)."""

    model_config = ConfigDict(extra="forbid")

    flights_per_day: int = Field(1, ge=1, le=100)
    by: str  # "HH:MM", the farm's local time
    min_files: int | None = Field(None, ge=1)

    @field_validator("by")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK_RE.fullmatch(value.strip()):
            raise ValueError(f"expected a time of day like '10:00' (24-hour HH:MM), got {value!r}")
        return value.strip()

    def deadline(self) -> time:
        hours, minutes = self.by.split(":")
        return time(int(hours), int(minutes))


class WatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # used by jobs (on_file / on_batch); any text, its key is in the subject cropcron.file.<key>
    path: str  # the watch root; relative paths are relative to the config file's directory
    extensions: list[str] = Field(default_factory=list)  # e.g. [.jpg, .tif]; any case; empty: all
    recursive: bool = True
    # matched against each path component (fnmatch): in-progress uploads and hidden files
    ignore: list[str] = Field(default_factory=lambda: ["*.part", "*.tmp", "*.partial", "*.crdownload", ".*"])
    mode: WatchMode = WatchMode.EVENTS
    poll_interval: Duration = 5.0  # polling mode: how often the tree is listed
    settle: Duration = 10.0  # size and mtime unchanged this long => complete (polling; fallback)
    rescan_interval: Duration = 60.0  # reconciliation scan: inotify drops events on overflow
    zero_byte: ZeroBytePolicy = ZeroBytePolicy.REJECT
    expect: Expectation | None = None  # what should arrive each day (the notifier's data alarms)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_name(value)  # as for jobs: any text of 1-64 characters (shared/names.py)

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        if "\0" in value:
            raise ValueError("must not contain NUL bytes")
        return value

    @field_validator("extensions")
    @classmethod
    def _check_extensions(cls, value: list[str]) -> list[str]:
        out = []
        for ext in value:
            ext = ext.strip().lower()
            if not ext or "/" in ext:
                raise ValueError(f"bad extension {ext!r}: expected something like '.jpg'")
            out.append(ext if ext.startswith(".") else "." + ext)
        return out

    @field_validator("poll_interval", "settle", "rescan_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value


class BatchGrouping(StrEnum):
    FOLDER = "folder"  # one batch per first-level folder under the root (a flight's folder)
    GAP = "gap"  # files of the watch in one run of arrivals; a `quiet` gap starts a new batch


class BatchRule(BaseModel):
    """`on_batch:` on a job: one run per flight, not one per image."""

    model_config = ConfigDict(extra="forbid")

    watch: str
    group_by: BatchGrouping = BatchGrouping.FOLDER
    quiet: Duration = 120.0  # close the batch after this long without a new complete file
    max_wait: Duration = 7200.0  # close it anyway this long after its first file (marked partial)
    manifest: str | None = None  # a file name pattern (fnmatch) whose arrival closes the batch
    expected_count: int | None = Field(None, ge=1)  # close once this many files arrived
    expect: Expectation | None = None  # this job's flights, judged on their own (else the watch's)

    @field_validator("watch")
    @classmethod
    def _watch(cls, value: str) -> str:
        return normalise_name(value)

    @field_validator("quiet", "max_wait")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value
