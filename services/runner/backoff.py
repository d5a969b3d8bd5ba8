"""Retry delays as data (after temporalio's RetryPolicy): attempt n failed -> wait this long."""

from __future__ import annotations

import random

from shared.config import Backoff, JobConfig


def retry_delay(job: JobConfig, failed_attempt: int, rng: random.Random | None = None) -> float:
    """Delay before attempt `failed_attempt + 1`. Jitter spreads retries of jobs that failed
    together (a shared outage) so they do not all return at the same instant."""
    base = job.retry_delay
    if job.backoff is Backoff.EXPONENTIAL:
        base = job.retry_delay * (2 ** (failed_attempt - 1))
    base = min(base, job.retry_delay_max)
    if job.retry_jitter:
        spread = base * job.retry_jitter
        base += (rng or random).uniform(-spread, spread)
    return max(base, 0.0)
