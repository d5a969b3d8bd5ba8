"""Checks of the broker users' boundaries against a real server, shared by the `cropcron up` test
(tests/test_nats_permissions.py) and the compose test (tests/test_compose.py)."""

from __future__ import annotations

import asyncio
import time

import nats
import nats.errors

from shared import wire
from shared.events import FileEvent

# what an outside program must never be able to do
FORBIDDEN = ("cropcron.trigger.normal.pulse", "cropcron.run.pulse.succeeded", "cropcron.alert.critical.forged",
             "$KV.cropcron_jobs.pulse")


async def connect(url: str, user: str, password: str) -> tuple[nats.NATS, list[str]]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())  # (nats-py lowercases the server's message anyway)

    nc = await nats.connect(url, user=user, password=password, inbox_prefix=f"_INBOX_{user}", error_cb=on_error,
                            max_reconnect_attempts=0)
    return nc, errors


async def _seen(errors: list[str], text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(text.lower() in e for e in errors):
        assert time.monotonic() < deadline, f"the server did not say: {text} (errors: {errors})"
        await asyncio.sleep(0.05)


async def assert_denied(url: str, user: str, password: str, subjects: tuple[str, ...]) -> None:
    """Each publish is refused by the server (the client hears of it; nothing is stored)."""
    nc, errors = await connect(url, user, password)
    try:
        for subject in subjects:
            await nc.publish(subject, b"{}")
            await _seen(errors, f'permissions violation for publish to "{subject}"')
    finally:
        await nc.close()


async def announce(url: str, password: str, event: FileEvent) -> None:
    """The uploader announces a file the way docs/events.md shows; the broker stores it."""
    nc, _ = await connect(url, "uploader", password)
    try:
        ack = await nc.jetstream(timeout=5).publish(wire.file_subject(event.watch), event.to_bytes(),
                                                    headers={wire.HEADER_MSG_ID: event.id})
        assert ack.stream == wire.STREAM_FILES
    finally:
        await nc.close()


async def observer_reads_and_cannot_publish(url: str, password: str) -> None:
    nc, errors = await connect(url, "observer", password)
    try:
        sub = await nc.subscribe("cropcron.run.>")
        msg = await sub.next_msg(20)
        assert msg.subject.startswith("cropcron.run.")
        for subject in ("cropcron.file.drops", "cropcron.trigger.high.pulse", "cropcron.run.pulse.dead"):
            await nc.publish(subject, b"{}")
            await _seen(errors, f'permissions violation for publish to "{subject}"')
        await nc.subscribe("_INBOX.>")  # and no reading of anyone's replies
        await _seen(errors, 'permissions violation for subscription to "_INBOX.>"')
    finally:
        await nc.close()


async def refused_without_credentials(url: str) -> None:
    try:
        nc = await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False, connect_timeout=3)
    except nats.errors.Error as exc:
        assert "authorization violation" in str(exc).lower(), exc
        return
    await nc.close()
    raise AssertionError("a connection without credentials was accepted")
