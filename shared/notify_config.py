"""The `notifications:` section of the config: channels, routing rules, storm control and the
dead-man's switch (docs/notifications.md). Secrets are never in the YAML: a channel names the
environment variable or the file that holds each one, resolved by whoever sends (the notifier,
`cropcron notify-test`), so the applied config in KV holds no secret either."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.durations import Duration
from shared.names import SAFE_NAME_RE, normalise_name
from shared.wire import ALERT_LEVELS

AlertLevelName = Literal["info", "warning", "error", "critical"]
# What a rule asks for unless it says: run-derived kinds, those raised by the notifier itself, `cropcron
# up`'s restart of its embedded broker or Postgres (cropcron/supervise.py) and disk, and a NATS cluster
# without quorum (sent straight to the channels by the notifier's process: cropcron/direct_alert.py),
# and the data alarms of a watch's `expect:` (services/notifier/expect.py).
DEFAULT_KINDS = ["dead", "timeout", "missed", "overdue", "service_down", "component_restarted", "disk_full",
                 "quorum_lost", "no_uploads", "incomplete_flight"]
# Fields that would hold a secret in the YAML: refused with a pointer to the *_env / *_file form.
SECRET_FIELDS = {"password": "password", "webhook_url": "webhook_url", "webhook": "webhook_url"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Channel(_Strict):
    escalate_to: str | None = None  # a channel that gets a message once when this one fails for good


class EmailChannel(_Channel):
    type: Literal["email"]
    host: str
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"  # "none": plain SMTP (loopback relays)
    username: str | None = None
    password_env: str | None = None  # the environment variable holding the password
    password_file: str | None = None  # or a file holding it (docker/compose secrets)
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    timeout: Duration = 15.0
    ca_file: str | None = None  # a CA bundle to trust (a relay with its own certificate); default: the system's

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip() or "/" in value or " " in value:
            raise ValueError(f"expected a host name or address, got {value!r}")
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _address(value)

    @field_validator("to")
    @classmethod
    def _to(cls, value: list[str]) -> list[str]:
        return [_address(v) for v in value]

    @model_validator(mode="after")
    def _secret(self) -> EmailChannel:
        if self.password_env and self.password_file:
            raise ValueError("give only one of password_env or password_file")
        if self.username and not (self.password_env or self.password_file):
            raise ValueError("username needs password_env (an environment variable) or password_file")
        return self


class SlackChannel(_Channel):
    type: Literal["slack"]
    webhook_url_env: str | None = None
    webhook_url_file: str | None = None
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _secret(self) -> SlackChannel:
        if (self.webhook_url_env is None) == (self.webhook_url_file is None):
            raise ValueError("give exactly one of webhook_url_env (an environment variable) or webhook_url_file")
        return self


class LogChannel(_Channel):
    type: Literal["log"]


Channel = Annotated[EmailChannel | SlackChannel | LogChannel, Field(discriminator="type")]


class Rule(_Strict):
    """Alerts of these kinds, jobs (fnmatch patterns), job types and at least this level go to
    these channels. Every matching rule applies (no first-match-wins surprises)."""

    name: str | None = None
    when: list[str] = Field(default_factory=lambda: list(DEFAULT_KINDS))  # alert kinds
    jobs: list[str] = Field(default_factory=lambda: ["*"])
    types: list[str] = Field(default_factory=list)  # empty: any job type (and alerts without a job)
    min_level: AlertLevelName = "info"
    channels: list[str] = Field(min_length=1)

    @field_validator("jobs")
    @classmethod
    def _nfc(cls, value: list[str]) -> list[str]:
        return [normalise_name(v) for v in value]  # matched against normalised job names


class OverdueConfig(_Strict):
    """Dead-man's switch: grace after a scheduled instant before a missing success is `overdue`.
    Derived per job: clamp(period * factor, min_grace, max_grace), unless set."""

    enabled: bool = True
    grace: Duration | None = None  # one grace for every job
    factor: float = Field(default=0.5, gt=0, le=100)
    min_grace: Duration = 60.0
    max_grace: Duration = 3600.0
    jobs: dict[str, Duration] = Field(default_factory=dict)  # per-job grace

    @field_validator("jobs")
    @classmethod
    def _nfc(cls, value: dict[str, float]) -> dict[str, float]:
        return {normalise_name(k): v for k, v in value.items()}


class NotificationsConfig(_Strict):
    group_window: Duration = 30.0  # wait this long after a group's first alert, then send one message
    group_interval: Duration = 300.0  # at least this long between messages of one group
    repeat_interval: Duration = 4 * 3600.0  # remind of a still-firing group this often
    service_down_after: Duration = 60.0  # a service heartbeat older than this raises service_down
    channels: dict[str, Channel] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    overdue: OverdueConfig = Field(default_factory=lambda: OverdueConfig())


def _address(value: str) -> str:
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or not domain or " " in value.strip():
        raise ValueError(f"expected an email address like ops@example.org, got {value!r}")
    return value.strip()


def _where(loc: tuple[Any, ...]) -> str:
    fields = [str(p) for p in loc if not str(p).startswith(("function-", "literal["))]
    return f"field '{'.'.join(fields)}'" if fields else "definition"


def _msg(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown field (check the spelling)"
    if err["type"] == "union_tag_invalid":
        return f"unknown channel type {err['input'].get('type')!r}; known: email, slack, log"
    if err["type"] == "union_tag_not_found":
        return "missing 'type' (email, slack or log)"
    return str(err["msg"]).removeprefix("Value error, ")


def parse_notifications(raw: Any) -> tuple[NotificationsConfig | None, list[str]]:
    """Validate the section; problems read "notifications: channel 'x': field 'y': why"."""
    if raw is None:
        return NotificationsConfig(), []
    if not isinstance(raw, dict):
        return None, ["notifications: expected a mapping with channels and rules"]
    problems: list[str] = []
    raw = dict(raw)
    channels = raw.pop("channels", None) or {}
    if not isinstance(channels, dict):
        problems.append("notifications: field 'channels': expected a mapping of channel name -> settings")
        channels = {}
    for name, body in channels.items():
        problems.extend(_channel_problems(name, body))
    try:
        top = NotificationsConfig.model_validate(raw)
    except ValidationError as exc:
        for e in exc.errors():
            loc = e["loc"]
            if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
                rule = _rule_name(raw, loc[1])
                problems.append(f"notifications: rule {rule}: {_where(loc[2:])}: {_msg(e)}")
            else:
                problems.append(f"notifications: {_where(loc)}: {_msg(e)}")
        top = None
    if problems:
        return None, problems
    assert top is not None
    config = top.model_copy(update={"channels": {n: _parse_channel(b) for n, b in channels.items()}})
    problems.extend(_reference_problems(config, raw))
    return (None, problems) if problems else (config, [])


def _channel_problems(name: Any, body: Any) -> list[str]:
    where = f"notifications: channel {name!r}"
    if not isinstance(name, str) or not SAFE_NAME_RE.match(name):
        return [f"{where}: bad name: use 1-64 letters, digits, '_' or '-' (it becomes a NATS subject token)"]
    if not isinstance(body, dict):
        return [f"{where}: expected a mapping with at least 'type'"]
    problems = []
    for key in body.keys() & SECRET_FIELDS.keys():
        field = SECRET_FIELDS[key]
        problems.append(f"{where}: field '{key}': secrets are not read from the YAML; name an environment "
                        f"variable ({field}_env) or a file ({field}_file) that holds it")
    if problems:
        return problems
    try:
        _parse_channel(body)
    except ValidationError as exc:
        problems.extend(f"{where}: {_where(e['loc'])}: {_msg(e)}" for e in exc.errors())
    return problems


def _parse_channel(body: Any) -> EmailChannel | SlackChannel | LogChannel:
    kind = body.get("type") if isinstance(body, dict) else None
    model: type[EmailChannel | SlackChannel | LogChannel]
    if kind == "email":
        model = EmailChannel
    elif kind == "slack":
        model = SlackChannel
    elif kind == "log":
        model = LogChannel
    else:
        raise ValidationError.from_exception_data("channel", [
            {"type": "value_error", "loc": ("type",), "input": kind,
             "ctx": {"error": ValueError(f"unknown channel type {kind!r}; known: email, slack, log"
                                         if kind is not None else "missing 'type' (email, slack or log)")}}])
    return model.model_validate(body)


def _rule_name(raw: dict[str, Any], index: int) -> str:
    try:
        name = raw["rules"][index].get("name")
    except (KeyError, IndexError, TypeError, AttributeError):
        name = None
    return repr(name) if name else f"#{index + 1}"


def _reference_problems(config: NotificationsConfig, raw: dict[str, Any]) -> list[str]:
    problems = []
    known = sorted(config.channels)
    for index, rule in enumerate(config.rules):
        for channel in rule.channels:
            if channel not in config.channels:
                problems.append(f"notifications: rule {_rule_name(raw, index)}: field 'channels': unknown channel "
                                f"{channel!r}; known: {', '.join(known) or 'none (add it under channels)'}")
    for name, ch in config.channels.items():
        target = ch.escalate_to
        if target is not None and (target not in config.channels or target == name):
            problems.append(f"notifications: channel {name!r}: field 'escalate_to': "
                            + ("cannot escalate to itself" if target == name else
                               f"unknown channel {target!r}; known: {', '.join(known)}"))
    return problems


# -- secrets -------------------------------------------------------------------------------
class SecretError(ValueError):
    """A secret that cannot be read; the message names where it was looked for, never its value."""


def read_secret(env_name: str | None, file: str | None, what: str,
                environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    if env_name is not None:
        value = environ.get(env_name, "")
        if not value.strip() and environ.get(f"{env_name}_FILE"):
            # the container convention (POSTGRES_PASSWORD_FILE): the variable names a secret
            # file, so one config serves `cropcron up` (a variable) and compose (a secret)
            file = environ[f"{env_name}_FILE"]
            what = f"{what} ({env_name}_FILE)"
        elif not value.strip():
            raise SecretError(f"{what}: environment variable {env_name} is not set (nor {env_name}_FILE)")
        else:
            return value.strip()
    if file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"{what}: cannot read secret file {file}: {exc.strerror}") from None
        if not value.strip():
            raise SecretError(f"{what}: secret file {file} is empty")
        return value.strip()
    raise SecretError(f"{what}: no secret configured")


def check_webhook_url(url: str) -> str:
    """A malformed webhook URL is a configuration error: say what is wrong without echoing it
    (the URL is a bearer credential)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SecretError(f"webhook URL is malformed ({exc})") from None
    if parts.scheme not in ("https", "http"):
        raise SecretError(f"webhook URL must start with https:// (got scheme {parts.scheme or 'none'!r})")
    if not parts.hostname:
        raise SecretError("webhook URL has no host")
    del port
    return url


def channel_problems(name: str, channel: EmailChannel | SlackChannel | LogChannel,
                     environ: Mapping[str, str] | None = None) -> list[str]:
    """What can be checked without contacting anything: secrets present, webhook URL well formed."""
    where = f"notifications: channel {name!r}"
    try:
        if isinstance(channel, EmailChannel) and channel.username:
            field = "password_env" if channel.password_env else "password_file"
            read_secret(channel.password_env, channel.password_file, f"{where}: field '{field}'", environ)
        if isinstance(channel, SlackChannel):
            field = "webhook_url_env" if channel.webhook_url_env else "webhook_url_file"
            url = read_secret(channel.webhook_url_env, channel.webhook_url_file, f"{where}: field '{field}'", environ)
            try:
                check_webhook_url(url)
            except SecretError as exc:
                raise SecretError(f"{where}: field '{field}': {exc}") from None
    except SecretError as exc:
        return [str(exc)]
    return []


def secret_problems(config: NotificationsConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    return [p for name, ch in config.channels.items() for p in channel_problems(name, ch, environ)]


LEVEL_RANK = {level: i for i, level in enumerate(ALERT_LEVELS)}
