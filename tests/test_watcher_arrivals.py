"""Detection on real files with real inotify and a real nats-server: what counts as one arrival.

The watcher runs in this event loop; a core subscription counts every FileEvent published (also
those JetStream would de-duplicate), so "exactly one" is checked strictly."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from pathlib import Path

from prometheus_client import REGISTRY
from watch_helpers import (  # noqa: F401 - the *_fixture names register fixtures
    Collector,
    InProcessWatcher,
    collector_fixture,
    set_watches,
    wait_live,
    watch,
    watcher_env_fixture,
    watcher_fixture,
    write_file,
)

from shared.bus import Bus
from shared.files import rel_bytes

QUIET = 4.0  # longer than settle (2 s) + a rescan (3 s) would need to show a spurious event


async def _settled(collector: Collector, n: int) -> None:
    """n events arrived, and no more within QUIET seconds."""
    await collector.wait_events(n)
    await asyncio.sleep(QUIET)


async def test_part_then_rename_move_in_rename_inside_overwrite(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path) -> None:
    root, outside = tmp_path / "incoming", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    await set_watches(bus, watch("imgs", root))
    await wait_live(bus, "imgs")  # KV -> catalog -> observer, then the first scan

    # 1. the upload tool's pattern: write name.part, rename to the final name -> one event
    write_file(root / "a.jpg.part", b"A" * 1000)
    os.rename(root / "a.jpg.part", root / "a.jpg")
    # 2. moved in from outside the tree -> one event
    write_file(outside / "b.jpg", b"B" * 1000)
    os.rename(outside / "b.jpg", root / "b.jpg")
    await _settled(collector, 2)
    assert collector.counts() == {b"a.jpg": 1, b"b.jpg": 1}
    assert collector.events[0].sha256 == hashlib.sha256(b"A" * 1000).hexdigest()

    # 3. renamed inside the tree: a file under a new name (the policy: a name is an arrival)
    os.rename(root / "b.jpg", root / "b2.jpg")
    await _settled(collector, 3)
    assert collector.counts()[b"b2.jpg"] == 1

    # 4. overwritten in place with new content -> a new arrival
    write_file(root / "a.jpg", b"C" * 1000)
    await _settled(collector, 4)
    assert collector.counts()[b"a.jpg"] == 2
    # 5. overwritten in place with identical content (new mtime) -> not a new arrival
    write_file(root / "a.jpg", b"C" * 1000)
    await asyncio.sleep(QUIET)
    assert len(collector.events) == 4, collector.counts()
    assert collector.counts() == {b"a.jpg": 2, b"b.jpg": 1, b"b2.jpg": 1}
    assert not collector.rejected


async def test_extensions_ignore_patterns_and_folder_renamed_in(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    await set_watches(bus, watch("imgs", root, extensions=[".jpg", "TIF"]))
    await wait_live(bus, "imgs")
    write_file(root / "x.txt", b"no")  # wrong extension
    write_file(root / ".hidden.jpg", b"no")  # dot-file
    write_file(root / "y.tmp", b"no")
    (root / "flight7.part").mkdir()  # an in-progress folder: ignored as a whole...
    for i in range(5):
        write_file(root / "flight7.part" / f"img{i}.JPG", b"%d" % i)
    write_file(root / "z.TIF", b"yes")
    await _settled(collector, 1)
    assert collector.counts() == {b"z.TIF": 1}
    os.rename(root / "flight7.part", root / "flight7")  # ...until it is renamed to its final name
    await _settled(collector, 6)
    assert sorted(collector.counts()) == sorted([b"z.TIF"] + [b"flight7/img%d.JPG" % i for i in range(5)])
    assert set(collector.counts().values()) == {1}


async def test_odd_files_rejected_once_with_a_reason(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path) -> None:
    root, outside = tmp_path / "incoming", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.jpg"
    write_file(secret, b"canary")
    reasons = ("symlink", "not_regular", "empty", "hard_links")
    before = {r: _count("cropcron_files_rejected_total", watch="imgs", reason=r) for r in reasons}
    announced = _count("cropcron_files_announced_total", watch="imgs")
    await set_watches(bus, watch("imgs", root))
    await wait_live(bus, "imgs")
    os.symlink(secret, root / "link.jpg")  # a symlink out of the root
    os.link(secret, root / "hard.jpg")  # a hard link to a file outside the root
    os.mkfifo(root / "pipe.jpg")  # opening it would block a naive watcher forever
    write_file(root / "empty.jpg", b"")  # zero bytes, policy reject (the default)
    write_file(root / "ok.jpg", b"fine")
    write_file(root / "gone.jpg", b"x")
    os.unlink(root / "gone.jpg")  # vanished before it could be examined: skipped, logged

    await collector.wait_rejected(lambda r: r.startswith("link.jpg: ") and "symbolic link" in r, "symlink")
    await collector.wait_rejected(lambda r: r.startswith("pipe.jpg: ") and "FIFO" in r, "FIFO")
    await collector.wait_rejected(lambda r: r.startswith("empty.jpg: ") and "zero bytes" in r, "zero-byte")
    await collector.wait_rejected(lambda r: r.startswith("hard.jpg: ") and "2 hard links" in r, "hard link")
    await _settled(collector, 1)
    assert collector.counts() == {b"ok.jpg": 1}
    # several scans later, each odd file was still reported exactly once
    assert len(collector.rejected) == 4, collector.reasons()
    assert secret.read_bytes() == b"canary"
    # counted on /metrics too, each under its reason (issue 10)
    assert {r: _count("cropcron_files_rejected_total", watch="imgs", reason=r) - before[r] for r in reasons} == \
        dict.fromkeys(reasons, 1.0)
    assert _count("cropcron_files_announced_total", watch="imgs") - announced == 1


def _count(name: str, **labels: str) -> float:
    """A counter of this process's registry (the watcher runs in-process here)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_zero_byte_accept_policy_and_non_utf8_name(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    root.mkdir()
    await set_watches(bus, watch("raw", root, zero_byte="accept"))
    await wait_live(bus, "raw")
    name = b"caf\xe9 $(rm -rf x) -n.jpg"  # Latin-1, not UTF-8, with shell and option bait
    write_file(Path(os.fsdecode(os.path.join(os.fsencode(root), name))), b"")
    await _settled(collector, 1)
    event = collector.events[0]
    assert collector.rels() == [name]
    assert event.rel_path_b64 is not None and event.size == 0
    assert not collector.rejected


async def test_writer_that_never_closes_visibly_is_caught_by_settle(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path) -> None:
    """Files written before the watch existed (and a tree copied in place) have no close event for
    us: the start-up scan and the settle rule find them, once each."""
    root = tmp_path / "incoming"
    root.mkdir()
    for i in range(20):
        write_file(root / f"pre{i}.jpg", b"%d" % i)
    shutil.copytree(root, tmp_path / "copy")
    await set_watches(bus, watch("imgs", root))
    await _settled(collector, 20)
    assert len(collector.counts()) == 20 and set(collector.counts().values()) == {1}


HOSTILE = [b"-rf", b"--output=x.jpg", b"a b.jpg", b"new\nline.jpg", b"tab\there.jpg", b"quote'\".jpg",
           b"$(touch CANARY).jpg", b"`id`.jpg", b"semi;colon&amp|pipe>.jpg", b"back\\slash.jpg",
           b"\xff\xfe not utf8.jpg", b"caf\xc3\xa9.jpg", b"\xe2\x80\xae gpj.exe", b"*?[].jpg",
           b"x" * 250 + b".jpg", b" leading and trailing space ", b"~tilde", b"-", b"\x01ctl.jpg"]


async def test_hostile_names_are_announced_byte_exact(
        bus: Bus, watcher: InProcessWatcher, collector: Collector, tmp_path: Path) -> None:
    root = tmp_path / "incoming"
    (root / "-sub dir").mkdir(parents=True)
    await set_watches(bus, watch("imgs", root))
    await wait_live(bus, "imgs")
    wanted: dict[bytes, str] = {}
    for i, name in enumerate(HOSTILE):
        rel = name if i % 2 else b"-sub dir/" + name
        with open(os.path.join(os.fsencode(root), rel), "wb") as f:  # noqa: ASYNC230 - the upload under test
            f.write(b"content %d" % i)
        wanted[rel] = hashlib.sha256(b"content %d" % i).hexdigest()
    await _settled(collector, len(HOSTILE))
    # every name came through byte-exact, with the content written under that very name
    assert {rel_bytes(e): e.sha256 for e in collector.events} == wanted and len(collector.events) == len(HOSTILE)
    assert not (Path.cwd() / "CANARY").exists() and not (root / "CANARY").exists()
