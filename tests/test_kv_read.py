"""Listing KV buckets on a real nats-server: every key, none twice, deleted ones left out, values in
the order written; and the catalog's initial load is complete when start() returns. nats-py's
KeyValue.keys() may report "no more keys" before reading the ones already sent (shared/kv_read.py):
a dispatcher taking over once loaded none of its open batches that way."""

from __future__ import annotations

import time

from nats.js.api import KeyValueConfig, StorageType

from shared import wire
from shared.bus import Bus, publish_until_acked
from shared.catalog import Catalog
from shared.kv_read import bucket_entries, bucket_keys
from shared.watch_config import WatchConfig


async def _put_many(bus: Bus, bucket: str, items: dict[str, bytes]) -> None:
    pubs = [(wire.kv_put_subject(bucket, k), v, f"t.{bucket}.{k}.{time.monotonic_ns()}") for k, v in items.items()]
    assert not await publish_until_acked(bus, pubs, "test kv puts")


async def test_bucket_entries_lists_every_live_key_once_in_write_order(bus: Bus) -> None:
    await bus.js.create_key_value(KeyValueConfig(bucket="t_list", history=1, storage=StorageType.FILE))
    kv = await bus.js.key_value("t_list")
    await _put_many(bus, "t_list", {f"k.{i:05d}": str(i).encode() for i in range(3000)})
    for i in range(0, 100, 10):
        await kv.delete(f"k.{i:05d}")  # a delete marker stays as the key's last message
    for i in range(5, 100, 10):
        await kv.purge(f"k.{i:05d}")  # a purge marker likewise
    await kv.put("k.00001", b"rewritten")  # now the newest value
    await kv.put("other", b"not under k.")

    entries = await bucket_entries(bus.js, "t_list")

    gone = {f"k.{i:05d}" for i in range(0, 100, 5)}
    assert set(entries) == {f"k.{i:05d}" for i in range(3000)} - gone | {"other"}
    assert list(entries)[-2:] == ["k.00001", "other"] and entries["k.00001"] == b"rewritten"
    assert list(entries)[:3] == ["k.00002", "k.00003", "k.00004"], "older values first"
    assert len(await bucket_keys(bus.js, "t_list", "k.")) == 3000  # deleted keys still have a message
    assert sorted(await bucket_keys(bus.js, "t_list", "k.0299")) == [f"k.{i:05d}" for i in range(2990, 3000)]
    assert list(await bucket_entries(bus.js, "t_list", "k.")) == list(entries)[:-1]


async def test_an_empty_or_missing_bucket_lists_nothing(bus: Bus) -> None:
    await bus.js.create_key_value(KeyValueConfig(bucket="t_empty", history=1, storage=StorageType.FILE))
    assert await bucket_entries(bus.js, "t_empty") == {}
    assert await bucket_keys(bus.js, "t_never_created") == []


async def test_catalog_start_returns_with_every_applied_watch_loaded(bus: Bus, tmp_path) -> None:
    watches = {f"w{i:04d}": WatchConfig(name=f"w{i:04d}", path=str(tmp_path / f"w{i}")) for i in range(2000)}
    await _put_many(bus, wire.KV_WATCHES, {k: w.model_dump_json().encode() for k, w in watches.items()})
    for _ in range(5):  # the race in keys()/watchall() needs the entries in flight: try a few times
        catalog = Catalog(bus.js)
        await catalog.start()
        try:
            assert len(catalog.watches) == 2000
        finally:
            await catalog.stop()
