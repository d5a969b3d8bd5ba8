"""All-or-nothing writes to one stream: JetStream atomic batch publish (nats-server 2.12+, ADR-50).

Every message carries the batch id and its sequence, the last one a commit marker; the server
stores the whole batch when the commit arrives, or none of it. `cropcron apply` writes a config's
changed keys this way, so a failure midway (a value the stream refuses, a broker going away) can
no longer leave old and new job definitions mixed. The stream needs `allow_atomic`
(`shared/topology.py: ensure_topology`, `ensure_atomic`).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from shared import wire

MAX_BATCH = 1000  # the server's limit of messages in one atomic batch


class BatchFailed(RuntimeError):
    """The batch was refused: nothing of it was stored."""


class BatchUncertain(RuntimeError):
    """No answer to the commit: the batch may or may not be stored (write it again: it is idempotent)."""


async def ensure_atomic(js: JetStreamContext, stream: str) -> None:
    """Turn on atomic batches for `stream` (a KV bucket's stream made by nats-py has them off)."""
    info = await js.stream_info(stream)
    if not info.config.allow_atomic:
        info.config.allow_atomic = True
        await js.update_stream(info.config)


async def publish_atomic(nc: Client, items: list[tuple[str, bytes, dict[str, str]]], timeout: float) -> int:
    """Publish `items` (subject, payload, headers) as one atomic batch; returns the stream sequence
    of the commit. Raises BatchFailed (nothing stored) or BatchUncertain (no answer)."""
    if not items:
        return 0
    if len(items) > MAX_BATCH:
        raise BatchFailed(f"{len(items)} messages in one batch; the server takes at most {MAX_BATCH}")
    batch = uuid.uuid4().hex
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        last = len(items)
        for seq, (subject, payload, headers) in enumerate(items, 1):
            h = {**headers, wire.HEADER_BATCH_ID: batch, wire.HEADER_BATCH_SEQ: str(seq)}
            if seq == last:
                h[wire.HEADER_BATCH_COMMIT] = "1"
            # the first message is answered (the batch is accepted, or why not) and the commit is;
            # the rest go without a reply subject
            await nc.publish(subject, payload, reply=inbox if seq in (1, last) else "", headers=h)
        while True:
            try:
                msg = await sub.next_msg(timeout)
            except TimeoutError:
                raise BatchUncertain(f"no answer to the commit of batch {batch} within {timeout:g}s") from None
            if (msg.headers or {}).get("Status") == "503":
                raise BatchFailed("no stream takes these subjects (no responders)")
            answer = _json(msg.data)
            if "error" in answer:
                error = answer["error"]
                raise BatchFailed(str(error.get("description", error)) if isinstance(error, dict) else str(error))
            if answer.get("batch") == batch:
                return int(answer.get("seq", 0))
            # an empty answer acknowledges the first message; keep waiting for the commit's
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _json(data: bytes) -> dict[str, Any]:
    if not data:
        return {}
    try:
        value = json.loads(data)
    except ValueError:
        return {"error": data[:200].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {}
