"""Prometheus metrics: the objects every service increments where the thing happens, served by
the process's HTTP endpoint (cropcron/endpoint.py) on /metrics. docs/operations.md lists them.

Label values are bounded: job, watch and channel names come from the applied config, states and
reasons from fixed sets (a free-text reason is mapped to one of REJECT_REASONS), and a name that
arrived from outside (an event for an unknown watch) is counted under "unknown".
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# A tick's start minus its scheduled instant: milliseconds when healthy, minutes when saturated
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)

RUNS = Counter("cropcron_runs", "Run events published by this runner, by job and state", ["job", "state"])
START_LATENESS = Histogram("cropcron_start_lateness_seconds",
                           "First attempt of a scheduled (tick) run: its start minus its scheduled instant",
                           buckets=LATENESS_BUCKETS)
RUN_DURATION = Histogram("cropcron_run_duration_seconds", "Duration of each finished attempt, by job", ["job"],
                         buckets=DURATION_BUCKETS)
FILES_ANNOUNCED = Counter("cropcron_files_announced", "Complete files announced by the watcher, by watch",
                          ["watch"])
FILES_REJECTED = Counter("cropcron_files_rejected",
                         "Files (watcher) and file events (dispatcher) refused, by watch and reason",
                         ["watch", "reason"])
ALERTS_SENT = Counter("cropcron_alerts_sent", "Notifications a channel accepted, by channel", ["channel"])
ALERTS_FAILED = Counter("cropcron_alerts_failed", "Notifications that failed for good, by channel", ["channel"])
ALERTS_RETRIED = Counter("cropcron_alerts_retried", "Delivery attempts that failed and will be retried, by channel",
                         ["channel"])
HISTORY_WRITE_LAG = Histogram("cropcron_history_write_lag_seconds",
                              "Postgres commit time minus each run event's `at`", buckets=LAG_BUCKETS)
HISTORY_LAST_LAG = Gauge("cropcron_history_last_write_lag_seconds",
                         "Write lag of the newest event in history's last committed batch")
CONSUMER_PENDING = Gauge("cropcron_consumer_pending", "Messages not yet delivered to a durable consumer",
                         ["stream", "consumer"])
CONSUMER_ACK_PENDING = Gauge("cropcron_consumer_ack_pending", "Messages delivered and not yet acknowledged",
                             ["stream", "consumer"])
CONSUMER_REDELIVERED = Gauge("cropcron_consumer_redelivered",
                             "Messages delivered more than once and not yet acknowledged", ["stream", "consumer"])
NATS_CONNECTED = Gauge("cropcron_nats_connected", "1 while this process is connected to NATS")
SERVICE_READY = Gauge("cropcron_service_ready", "1 once the service is subscribed/fetching", ["service"])

# The fixed set a rejection reason is counted under (first match wins); anything else is "other".
REJECT_REASONS: tuple[tuple[str, str], ...] = (
    ("relative path", "bad_path"),  # the dispatcher's checks of an event's rel_path
    ("base64", "bad_path"),
    ("empty", "empty"),
    ("hard link", "hard_links"),
    ("symbolic link", "symlink"),
    ("not a regular file", "not_regular"),
    ("leaves the watch root", "outside_root"),
    ("cannot read", "unreadable"),
    ("cannot stat", "unreadable"),
    ("not available", "root_unavailable"),
    ("malformed", "malformed"),
    ("arrived on subject", "wrong_subject"),
    ("unknown watch", "unknown_watch"),
)


def reject_reason(text: str) -> str:
    lowered = text.lower()
    return next((label for needle, label in REJECT_REASONS if needle in lowered), "other")


# Children by label values, looked up once: `labels()` validates and locks on every call, which
# at thousands of runs a second was 3 % of the runner's time (bench/results.md, issue 12). The
# label values are bounded (above), so the caches are too.
_runs: dict[tuple[str, str], Any] = {}
_durations: dict[str, Any] = {}


def _runs_of(job: str, state: str) -> Any:
    child = _runs.get((job, state))
    if child is None:
        child = _runs[job, state] = RUNS.labels(job, state)
    return child


def run_duration(job: str, seconds: float) -> None:
    child = _durations.get(job)
    if child is None:
        child = _durations[job] = RUN_DURATION.labels(job)
    child.observe(seconds)


def run_started(job: str, scheduled_at: datetime | None, started: datetime, kind: str, attempt: int) -> None:
    """A `started` event, and the lateness of a tick's first attempt (a retry is late on purpose;
    a manual or file run has no instant to be late for)."""
    _runs_of(job, "started").inc()
    if kind == "tick" and attempt == 1 and scheduled_at is not None:
        START_LATENESS.observe(max((started - scheduled_at).total_seconds(), 0.0))


def run_events(events: Iterable[tuple[str, str]]) -> None:
    """(job, state) of each run event published."""
    for job, state in events:
        _runs_of(job, state).inc()


def file_rejected(watch: str, reason: str, known: Container[str] | None = None) -> None:
    """`known`: the configured watch names, when `watch` came from outside (an event's subject)."""
    label = watch if known is None or watch in known else "unknown"
    FILES_REJECTED.labels(label, reject_reason(reason)).inc()


def written(lags: Iterable[float]) -> None:
    """History committed events that were `lags` seconds old."""
    newest = None
    for lag in lags:
        HISTORY_WRITE_LAG.observe(max(lag, 0.0))
        newest = lag if newest is None else min(newest, lag)
    if newest is not None:
        HISTORY_LAST_LAG.set(max(newest, 0.0))
