"""Request/reply with answers of any size. A NATS message is at most the server's max_payload (1 MiB
by default): a history answer of 10,000 runs with their output was bigger, the broker refused the
reply, and the CLI said "no answer ... is it running?" while history was running. The responder
sends an answer that does not fit as numbered chunks to the same reply subject (one connection's
messages arrive in order); the asker joins them. An answer that fits is one plain message, as
before, so other programs asking with an ordinary NATS request keep working for small answers."""

from __future__ import annotations

import asyncio
import contextlib

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from shared import wire

HEADROOM = 4096  # bytes of max_payload left for the headers and the protocol line
MAX_REPLY = 64 * 1024 * 1024  # beyond this the responder refuses: narrow the query instead


class ReplyTooLarge(ValueError):
    pass


def chunks(body: bytes, max_payload: int) -> list[bytes]:
    size = max(max_payload - HEADROOM, 1024)
    return [body[i:i + size] for i in range(0, len(body), size)] or [b""]


async def respond(nc: Client, msg: Msg, body: bytes) -> None:
    """Answer `msg` with `body`, in chunks when it does not fit in one message."""
    if not msg.reply:
        return
    if len(body) > MAX_REPLY:
        raise ReplyTooLarge(f"the answer is {len(body) / 2**20:.0f} MiB, over {MAX_REPLY // 2**20} MiB")
    parts = chunks(body, nc.max_payload)
    if len(parts) == 1:
        await nc.publish(msg.reply, body)
        return
    for index, part in enumerate(parts):
        await nc.publish(msg.reply, part, headers={wire.HEADER_CHUNK: str(index), wire.HEADER_CHUNKS: str(len(parts))})


async def ask(nc: Client, subject: str, payload: bytes, timeout: float) -> bytes:
    """Send a request and return the whole answer (joined from its chunks). Raises
    NoRespondersError when nobody serves `subject`, TimeoutError when an answer (or a chunk) is
    `timeout` seconds late."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(subject, payload, reply=inbox)
        first = await sub.next_msg(timeout)
        headers = first.headers or {}
        if headers.get("Status") == "503":  # the server's "no responders" status message
            raise NoRespondersError
        total = int(headers.get(wire.HEADER_CHUNKS, "1"))
        if total == 1:
            return first.data
        parts = {int(headers.get(wire.HEADER_CHUNK, "0")): first.data}
        while len(parts) < total:
            msg = await asyncio.wait_for(sub.next_msg(timeout), timeout)
            parts[int((msg.headers or {}).get(wire.HEADER_CHUNK, "0"))] = msg.data
        return b"".join(parts[i] for i in range(total))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
