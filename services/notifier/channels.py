"""The channels: email (aiosmtplib), Slack incoming webhook (httpx), the log. Each classifies its
failures in exactly one place into DeliveryError(permanent=...): transient ones are retried with
backoff, permanent ones are recorded and escalated once (RELIABILITY A10, §4.1-4.2). Secrets are
read when sending and never appear in a log line or an error message."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import format_datetime

import aiosmtplib
import httpx

from services.notifier import digest, render
from services.notifier.render import PLAIN, Look
from services.notifier.settings import NotifierSettings
from shared.events import Notification
from shared.notify_config import (
    EmailChannel,
    LogChannel,
    SecretError,
    SlackChannel,
    check_webhook_url,
    read_secret,
)

log = logging.getLogger("cropcron.notifier")
alert_log = logging.getLogger("cropcron.alerts")
# httpx logs every request line, URL included, at INFO: the webhook URL is a bearer credential
logging.getLogger("httpx").setLevel(logging.WARNING)


class DeliveryError(Exception):
    def __init__(self, reason: str, permanent: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.retry_after = retry_after


def message_id(n: Notification) -> str:
    """Deterministic: a redelivered notification is the same email (RELIABILITY §4.1 ambiguity)."""
    return f"<{n.id}@cropcron>"


class Sender:
    # the language and time zone messages are written in, asked at each send (the notifier follows
    # the applied system section); English and UTC unless the maker says otherwise
    look: Callable[[], Look] = staticmethod(lambda: PLAIN)

    async def send(self, n: Notification) -> str | None:  # returns the Message-ID, if any
        raise NotImplementedError

    async def close(self) -> None:
        return None


class LogSender(Sender):
    def __init__(self, name: str, channel: LogChannel, dashboard_url: str) -> None:
        self.name = name
        self.dashboard_url = dashboard_url

    async def send(self, n: Notification) -> str | None:
        level = max((LOG_LEVELS[a.level] for a in n.alerts), default=logging.INFO)
        if n.status in ("resolved", "test"):
            level = logging.INFO
        # the log stays in English (logs are for operators' tools), in the farm's zone
        look = Look("en", self.look().timezone)
        if n.digest is not None:
            alert_log.info("%s\n%s", digest.subject(n, look), digest.text_body(n, self.dashboard_url, look))
            return None
        alert_log.log(level, "%s\n%s", render.subject(n, look), render.text_body(n, self.dashboard_url, look))
        return None


LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}


class EmailSender(Sender):
    def __init__(self, name: str, channel: EmailChannel, dashboard_url: str) -> None:
        self.name = name
        self.channel = channel
        self.dashboard_url = dashboard_url

    def build(self, n: Notification) -> EmailMessage:
        look = self.look()
        if n.digest is not None:  # text, HTML and its chart (multipart/related)
            msg = digest.email(n, self.dashboard_url, look)
        else:
            msg = EmailMessage()
            msg["Subject"] = render.subject(n, look)
            msg.set_content(render.text_body(n, self.dashboard_url, look))
            msg.add_alternative(render.html_body(n, self.dashboard_url, look), subtype="html")
        msg["From"] = self.channel.sender
        msg["To"] = ", ".join(self.channel.to)
        msg["Date"] = format_datetime(n.created_at)
        msg["Message-ID"] = message_id(n)
        msg["X-Cropcron-Notification"] = n.id
        return msg

    async def send(self, n: Notification) -> str | None:
        ch = self.channel
        password = None
        if ch.username:
            try:
                password = read_secret(ch.password_env, ch.password_file, "SMTP password")
            except SecretError as exc:
                raise DeliveryError(str(exc), permanent=True) from None
        msg = self.build(n)
        try:
            await aiosmtplib.send(msg, hostname=ch.host, port=ch.port, username=ch.username, password=password,
                                  use_tls=ch.security == "tls", start_tls=ch.security == "starttls",
                                  cert_bundle=ch.ca_file, timeout=ch.timeout)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            raise DeliveryError(f"SMTP refused the recipients ({'; '.join(str(r) for r in exc.recipients)})",
                                permanent=any(c >= 500 for c in codes)) from None
        except aiosmtplib.SMTPResponseException as exc:
            # RFC 5321 §4.2.1: 4yz transient, 5yz permanent (535: bad credentials, also permanent)
            raise DeliveryError(f"SMTP {exc.code} {exc.message}", permanent=exc.code >= 500) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise DeliveryError(f"SMTP {ch.host}:{ch.port}: {type(exc).__name__}: {exc}", permanent=False) from None
        return message_id(n)


class TokenBucket:
    """At most `rate` sends per second with bursts of `burst` (Slack: ~1 msg/s per webhook); a
    429 pushes the next permitted send past its Retry-After for every message on that webhook."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = time.monotonic()
        self.not_before = 0.0
        self.lock = asyncio.Lock()

    def delay(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        wait = max(self.not_before - now, 0.0)
        if self.tokens < 1:
            wait = max(wait, (1 - self.tokens) / self.rate)
        return wait

    def take(self) -> None:
        self.tokens -= 1

    def hold(self, seconds: float) -> None:
        self.not_before = max(self.not_before, time.monotonic() + seconds)


class SlackSender(Sender):
    def __init__(self, name: str, channel: SlackChannel, dashboard_url: str, bucket: TokenBucket,
                 retry_after_cap: float) -> None:
        self.name = name
        self.channel = channel
        self.dashboard_url = dashboard_url
        self.bucket = bucket
        self.retry_after_cap = retry_after_cap
        self.client = httpx.AsyncClient(timeout=channel.timeout, follow_redirects=False)

    def url(self) -> str:
        ch = self.channel
        try:
            return check_webhook_url(read_secret(ch.webhook_url_env, ch.webhook_url_file, "Slack webhook URL"))
        except SecretError as exc:
            raise DeliveryError(str(exc), permanent=True) from None

    async def send(self, n: Notification) -> str | None:
        url = self.url()
        async with self.bucket.lock:  # one request at a time per webhook, paced by the bucket
            wait = self.bucket.delay()
            if wait > 0:
                await asyncio.sleep(wait)  # the lock is held: nothing else can take the token meanwhile
                self.bucket.delay()
            self.bucket.take()
            try:
                payload = (digest.slack_payload(n, self.dashboard_url, self.look()) if n.digest is not None
                           else render.slack_payload(n, self.dashboard_url, self.look()))
                resp = await self.client.post(url, json=payload)
            except httpx.HTTPError as exc:
                # httpx errors can carry the request URL: name the type only, never the webhook
                raise DeliveryError(f"Slack webhook unreachable ({type(exc).__name__})", permanent=False) from None
            if resp.status_code == 429:
                after = _retry_after(resp.headers.get("Retry-After"))
                if after > self.retry_after_cap:
                    log.warning("notifier: Slack channel %s asked to wait %.0fs; capped at %.0fs", self.name, after,
                                self.retry_after_cap)
                    after = self.retry_after_cap
                self.bucket.hold(after)
                raise DeliveryError(f"Slack 429 rate limited (Retry-After {after:g}s)", permanent=False,
                                    retry_after=after)
        if resp.status_code >= 500:
            raise DeliveryError(f"Slack {resp.status_code} {resp.text[:100]!r}", permanent=False)
        if resp.status_code >= 300:
            # 403 invalid_token, 404 no_service, 410 channel_is_archived...: a revoked webhook
            raise DeliveryError(f"Slack {resp.status_code} {resp.text[:100]!r} (webhook revoked or wrong?)",
                                permanent=True)
        return None

    async def close(self) -> None:
        await self.client.aclose()


def _retry_after(value: str | None) -> float:
    try:
        return max(float(value or "1"), 0.0)
    except ValueError:
        return 1.0


def make_sender(name: str, channel: EmailChannel | SlackChannel | LogChannel, ns: NotifierSettings,
                bucket: TokenBucket | None = None, look: Callable[[], Look] | None = None) -> Sender:
    """The sender for one configured channel (the notifier keeps one token bucket per webhook
    across config changes and passes it in; `look` gives the farm's language and zone)."""
    sender: Sender
    if isinstance(channel, EmailChannel):
        sender = EmailSender(name, channel, ns.dashboard_url)
    elif isinstance(channel, SlackChannel):
        sender = SlackSender(name, channel, ns.dashboard_url, bucket or TokenBucket(ns.slack_rate, ns.slack_burst),
                             ns.notify_retry_after_cap)
    else:
        sender = LogSender(name, channel, ns.dashboard_url)
    if look is not None:
        sender.look = look
    return sender
