"""Dashboard settings from the environment (CROPCRON_DASHBOARD_*), and the access token.

The token comes from CROPCRON_DASHBOARD_TOKEN or, better (it then stays out of `ps e` and compose
files), from the file named by CROPCRON_DASHBOARD_TOKEN_FILE. `cropcron up` without either
generates one into <data-dir>/dashboard-token (mode 0600) and logs the file's path, never the token.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import UserError

log = logging.getLogger("cropcron.dashboard")

TOKEN_FILE_NAME = "dashboard-token"
MIN_TOKEN_LENGTH = 16


class TokenError(UserError):
    """No usable token: a configuration error (the CLI exits 2 with this message)."""


class DashboardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CROPCRON_DASHBOARD_", extra="ignore")

    host: str = "127.0.0.1"  # loopback by default (RELIABILITY §5.4): expose only behind a TLS proxy
    port: int = 8080
    port_fallback: bool = True  # the port is taken: use a free one and log it (`cropcron up` must start)
    token: str | None = None  # the operator's: may run, pause and resume jobs
    token_file: Path | None = None
    viewer_token: str | None = None  # optional second token that may only look
    viewer_token_file: Path | None = None
    session_ttl: float = 12 * 3600.0  # seconds a login lasts
    secure_cookie: bool = False  # set when served over HTTPS (behind a proxy), so the cookie needs TLS
    request_timeout: float = 5.0  # history queries and KV reads per request
    alerts_timeout: float = 2.0  # the alert query may have no responder (notifier not deployed)
    sse_keepalive: float = 15.0  # comment lines keep proxies from closing an idle event stream
    sse_queue: int = 1000  # events buffered per browser; a slower one is told to resync
    login_attempts: int = 10  # failed logins per client address per minute before 429
    service_stale_factor: float = 3.0  # a heartbeat older than this many intervals: service down


def _read(value: str | None, file: Path | None, name: str) -> str | None:
    if value is None and file is not None:
        try:
            value = file.read_text().strip()
        except OSError as exc:
            raise TokenError(f"cannot read {name}_FILE {file}: {exc.strerror}") from None
    if value is not None and len(value) < MIN_TOKEN_LENGTH:
        raise TokenError(f"{name} must be at least {MIN_TOKEN_LENGTH} characters")
    return value


def load_token(settings: DashboardSettings) -> str:
    """The configured operator token; a clear error if none is configured or it is unusable."""
    token = _read(settings.token, settings.token_file, "CROPCRON_DASHBOARD_TOKEN")
    if token is None:
        raise TokenError("the dashboard needs an access token: set CROPCRON_DASHBOARD_TOKEN_FILE (a file holding "
                         "it) or CROPCRON_DASHBOARD_TOKEN; `cropcron up` generates one in its data dir")
    return token


def load_viewer_token(settings: DashboardSettings, token: str) -> str | None:
    viewer = _read(settings.viewer_token, settings.viewer_token_file, "CROPCRON_DASHBOARD_VIEWER_TOKEN")
    if viewer is not None and viewer == token:
        raise TokenError("CROPCRON_DASHBOARD_VIEWER_TOKEN must differ from the operator's token")
    return viewer


def ensure_token_file(data_dir: Path) -> Path | None:
    """For `cropcron up`: unless a token is configured, make sure <data-dir>/dashboard-token holds one
    (created once, mode 0600, kept across restarts) and point CROPCRON_DASHBOARD_TOKEN_FILE at it.
    Returns the file used, or None when the environment already configures a token."""
    if os.environ.get("CROPCRON_DASHBOARD_TOKEN") or os.environ.get("CROPCRON_DASHBOARD_TOKEN_FILE"):
        return None
    path = data_dir / TOKEN_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
        log.info("dashboard: generated an access token in %s (mode 0600)", path)
    os.environ["CROPCRON_DASHBOARD_TOKEN_FILE"] = str(path)
    return path
