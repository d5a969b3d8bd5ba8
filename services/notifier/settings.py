"""Notifier knobs from the environment (CROPCRON_ prefix). Policy (group windows, grace periods)
is in the config's `notifications:` section; these are the mechanics, shrunk by tests."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CROPCRON_", extra="ignore")

    dashboard_url: str = "http://127.0.0.1:8080"  # links in messages: <dashboard_url>/runs/<run_id>
    notify_tick: float = 0.5  # how often due groups are flushed and intake is polled
    notify_retry_base: float = 2.0  # transient failure: retry after base * 2^(n-1) ...
    notify_retry_max: float = 300.0  # ... capped here
    notify_max_attempts: int = 20  # transient failures after which a delivery counts as failed for good
    notify_retry_after_cap: float = 600.0  # a Slack Retry-After longer than this is capped (and logged)
    slack_rate: float = 1.0  # messages per second per webhook (Slack's documented limit)
    slack_burst: float = 3.0
    deadman_interval: float = 5.0  # how often overdue jobs and silent services are checked
    notify_max_alerts: int = 20  # alerts listed in one message; the rest are counted
