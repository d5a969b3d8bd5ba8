"""Watcher settings from the environment (CROPCRON_WATCHER_*). The per-watch rules (mode, settle,
rescan interval, ...) come from the config file; these are the process's own knobs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.paths import default_data_dir


class WatcherSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CROPCRON_WATCHER_", extra="ignore")

    # where the record of published file versions lives (survives restarts: exactly once)
    state_dir: Path = Field(default_factory=lambda: default_data_dir() / "watcher")
    root_retry: float = 5.0  # a missing watch root is looked for again this often (seconds)
    publish_batch: int = 1000  # files hashed and published per round (one PubAck wait each)
    settle_check: float = 1.0  # upper bound on how often pending files are re-examined (seconds)
