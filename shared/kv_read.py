"""Listing a KV bucket without nats-py's KeyValue.keys().

keys() lists through a watcher that reports "no more keys" as soon as the consumer says nothing is
pending. The server can have sent every entry already while the client has read none of them, so
under load keys() returns too few keys or raises NoKeysError on a full bucket. In CI that made a
dispatcher taking over load no open flight batch at all, and its files were lost to the batch.
The stream's own subject list (stream info with a subjects filter) has no such race: every key
that has a message, its latest value then read with get(); deleted keys are skipped."""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NotFoundError

log = logging.getLogger("cropcron.kv")

# the server lists at most this many subjects in one stream info answer (JSMaxSubjectDetails)
_SUBJECTS_LIMIT = 100_000
_GETS_AT_ONCE = 256  # gets in flight together: round trips overlap, memory stays bounded


async def bucket_keys(js: JetStreamContext, bucket: str, prefix: str = "") -> list[str]:
    """Keys of `bucket` (starting with `prefix`) that have a message; a key whose latest message
    is a delete marker is included (get() tells), a purged one is not."""
    # the server filters whole tokens only: "group." narrows the listing, "grou" is filtered here
    token_prefix = prefix[:prefix.rfind(".") + 1]
    subject = f"$KV.{bucket}.{token_prefix}>"
    try:
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=subject)
    except NotFoundError:
        return []
    subjects = info.state.subjects or {}
    if len(subjects) >= _SUBJECTS_LIMIT:
        log.error("KV bucket %s: more than %d keys; only the first are read", bucket, _SUBJECTS_LIMIT)
    start = len(f"$KV.{bucket}.")
    return [s[start:] for s in subjects if s[start:].startswith(prefix)]


async def bucket_entries(js: JetStreamContext, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """key -> latest value, for every key of `bucket` (starting with `prefix`) that has a value,
    in the order the values were written (their stream sequence)."""
    kv = await js.key_value(bucket)
    keys = await bucket_keys(js, bucket, prefix)
    found: list[tuple[int, str, bytes]] = []

    async def one(key: str) -> None:
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return  # deleted or purged between listing and reading
        if entry.value:
            found.append((entry.revision or 0, key, entry.value))

    for start in range(0, len(keys), _GETS_AT_ONCE):
        await asyncio.gather(*(one(k) for k in keys[start:start + _GETS_AT_ONCE]))
    return {key: value for _, key, value in sorted(found)}
