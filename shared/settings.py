"""Service settings from the environment (compose, `cropcron <service>`), with test-friendly knobs:
every timeout and backoff is configurable so tests can shrink them (RELIABILITY §7.4)."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BusSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CROPCRON_", extra="ignore")

    ack_wait: float = 30.0  # a runner heartbeats every ack_wait/3 while a job runs
    max_deliver: int = 100  # safety net; per-job max_retries is enforced by the runner
    max_ack_pending: int = 20000
    duplicate_window: float = 600.0  # Nats-Msg-Id dedup horizon; Postgres is the real dedup
    run_events_max_age: float = 7 * 86400.0
    ping_interval: int = 10
    request_timeout: float = 10.0
    # the notifier's outbox consumer: a delivery in progress is redelivered after this much silence
    # (the notifier keeps a slow send alive at a third of it)
    notify_ack_wait: float = 60.0
    # copies of every stream, consumer and KV bucket (CROPCRON_REPLICAS): 1 on one nats-server,
    # 3 on a three-node cluster (docs/scale-out.md); at most the number of nodes
    replicas: Annotated[int, Field(ge=1, le=5)] = 1


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CROPCRON_", extra="ignore")

    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias=AliasChoices("NATS_URL", "CROPCRON_NATS_URL"))
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "CROPCRON_DATABASE_URL"))
    # unique per process even where containers share a hostname (host networking) and a pid
    # (each container's first process has the same low pid): a random suffix
    instance: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
    # the health/metrics endpoint (cropcron/endpoint.py): one port per process; 0 = any free port
    http_host: str = "127.0.0.1"
    http_port: int = Field(9464, ge=0, le=65535)
    http_port_fallback: bool = False  # taken port: use a free one and log it (`cropcron up`) instead of failing
    http_url_file: Path | None = None  # where the URL actually listened on is written (`cropcron healthcheck`)
    metrics_interval: float = Field(10.0, gt=0)  # seconds between reads of consumer info for the gauges
    # seconds between checks that JetStream answers (a cluster without quorum does not): /healthz
    jetstream_check: float = Field(5.0, gt=0)
    # notifier processes: JetStream unavailable this long -> `quorum_lost` straight to the channels
    quorum_alert_after: float = Field(30.0, ge=0)
    # runner
    concurrency: int = 16  # runs at once in this runner process
    fetch_batch: int = 256
    kill_grace: float = 5.0  # SIGTERM -> SIGKILL for a timed-out job's process group
    # a run still going this long gets a `started` event; a shorter one publishes only its outcome
    # (which carries started_at): one stored message per run instead of two (issue 12). 0: always
    started_after: float = Field(0.25, ge=0)
    lease_ttl: float = 0.0  # 0: 3 x ack_wait
    # timer
    leader_ttl: float = 10.0  # a standby timer takes over this long after the leader stopped
    max_catchup_instants: int = 1000  # per job; beyond, one summary `missed` event
    # seconds a tick is published ahead of its instant, for runners to start it at the instant
    # itself (not after the timer's and the broker's path); 0: at the instant. Costs one more
    # delivery per tick (docs/architecture.md, "Exact starts")
    tick_lead: float = Field(0.0, ge=0, le=30)
    # history
    history_batch: int = 1000
    heartbeat_interval: float = 5.0
