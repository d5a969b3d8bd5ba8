"""The watcher's parts without the bus: name filters, the tree listing, the examination of a
complete file, the settle rule, and the record of what was announced."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from services.watcher.files import Entry, NameFilter, examine, list_tree, rel_of
from services.watcher.state import Known, StateStore
from services.watcher.tracker import Tracker
from shared.watch_config import WatchConfig, ZeroBytePolicy


def _filter(**kw: object) -> NameFilter:
    return NameFilter(WatchConfig(name="w", path="/x", **kw))  # type: ignore[arg-type]


def test_name_filter_extensions_ignore_and_recursion() -> None:
    f = _filter(extensions=[".JPG", "tif"])
    assert f.wants(b"a.jpg") and f.wants(b"flight1/B.JPG") and f.wants(b"c.tif")
    assert not f.wants(b"a.txt") and not f.wants(b"a.jpg.part") and not f.wants(b".a.jpg")
    assert not f.wants(b"flight1.part/a.jpg")  # ignore patterns apply to every component
    assert not f.wants(b".sync/a.jpg")
    flat = _filter(recursive=False)
    assert flat.wants(b"a.bin") and not flat.wants(b"sub/a.bin")
    assert _filter(ignore=[]).wants(b".hidden")


def test_rel_of() -> None:
    assert rel_of(b"/r", b"/r/a/b") == b"a/b"
    assert rel_of(b"/r/", b"/r/a") == b"a"
    assert rel_of(b"/r", b"/r") is None and rel_of(b"/r", b"/rx/a") is None and rel_of(b"/r", b"/r/") is None


def test_list_tree_never_follows_links_and_skips_ignored_folders(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.jpg").write_bytes(b"x")
    root = tmp_path / "root"
    (root / "f1").mkdir(parents=True)
    (root / "f1" / "a.jpg").write_bytes(b"aa")
    (root / ".cache").mkdir()
    (root / ".cache" / "c.jpg").write_bytes(b"c")
    (root / "link.jpg").symlink_to(outside / "deep" / "x.jpg")
    (root / "dirlink").symlink_to(outside / "deep")
    os.mkfifo(root / "p.jpg")
    name = b"caf\xe9.jpg"
    with open(os.path.join(os.fsencode(root), name), "wb") as f:
        f.write(b"cafe")
    entries = {e.rel: e for e in list_tree(os.fsencode(root), _filter())}
    assert set(entries) == {b"f1/a.jpg", b"link.jpg", b"dirlink", b"p.jpg", name}
    assert entries[b"f1/a.jpg"].regular and entries[b"f1/a.jpg"].size == 2
    assert not entries[b"link.jpg"].regular and not entries[b"dirlink"].regular and not entries[b"p.jpg"].regular
    assert list_tree(os.fsencode(root), _filter(), b"f1") == [entries[b"f1/a.jpg"]]


def test_examine_hashes_rejects_and_skips_known(tmp_path: Path) -> None:
    root = str(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "link.jpg").symlink_to("/etc/passwd")
    os.mkfifo(tmp_path / "fifo.jpg")
    ok = examine(root, b"a.jpg", ZeroBytePolicy.REJECT)
    assert ok.sha256 == hashlib.sha256(b"hello").hexdigest() and ok.info is not None
    version = (ok.info.st_size, ok.info.st_mtime_ns)
    assert examine(root, b"a.jpg", ZeroBytePolicy.REJECT, version).unchanged
    assert "zero bytes" in (examine(root, b"empty.jpg", ZeroBytePolicy.REJECT).reason or "")
    assert examine(root, b"empty.jpg", ZeroBytePolicy.ACCEPT).sha256 == hashlib.sha256(b"").hexdigest()
    assert "symbolic link" in (examine(root, b"link.jpg", ZeroBytePolicy.REJECT).reason or "")
    assert "FIFO" in (examine(root, b"fifo.jpg", ZeroBytePolicy.REJECT).reason or "")  # and did not block
    assert examine(root, b"gone.jpg", ZeroBytePolicy.REJECT).vanished
    os.link(tmp_path / "a.jpg", tmp_path.parent / f"{tmp_path.name}-outside.jpg")
    assert "2 hard links" in (examine(root, b"a.jpg", ZeroBytePolicy.REJECT).reason or "")


def _entry(rel: bytes, size: int, mtime: int, ctime: int | None = None, regular: bool = True) -> Entry:
    return Entry(rel, regular, size, mtime, mtime if ctime is None else ctime)


def test_settle_needs_two_sightings_on_network_mounts() -> None:
    t = Tracker(settle=10, trust_ctime=False, known={}, rejected={})
    wall = time.time_ns()
    old = wall - 3600 * 10**9  # an old mtime proves nothing on a mount with another clock
    t.seen(_entry(b"a", 5, old), now=100, now_wall_ns=wall)
    assert not t.ready and b"a" in t.pending
    t.seen(_entry(b"a", 5, old), now=105, now_wall_ns=wall)
    assert not t.ready
    t.seen(_entry(b"a", 6, old + 1), now=109, now_wall_ns=wall)  # grew: the clock starts again
    t.seen(_entry(b"a", 6, old + 1), now=118, now_wall_ns=wall)
    assert not t.ready
    t.seen(_entry(b"a", 6, old + 1), now=119, now_wall_ns=wall)
    assert t.take_ready(10) == [b"a"] and not t.pending


def test_settle_on_local_disk_trusts_untouched_timestamps() -> None:
    t = Tracker(settle=10, trust_ctime=True, known={}, rejected={})
    wall = time.time_ns()
    t.seen(_entry(b"old", 5, wall - 11 * 10**9), now=0, now_wall_ns=wall)
    # mtime set back (cp -p, tar) but ctime recent: still being written
    t.seen(_entry(b"copied", 5, wall - 99 * 10**9, ctime=wall - 10**9), now=0, now_wall_ns=wall)
    assert t.take_ready(10) == [b"old"] and b"copied" in t.pending


def test_known_and_rejected_versions_are_not_examined_again() -> None:
    t = Tracker(settle=1, trust_ctime=True, known={b"a": Known(5, 7, "h")}, rejected={b"p": (0, 9)})
    wall = time.time_ns()
    t.seen(_entry(b"a", 5, 7), 0, wall)
    t.seen(_entry(b"p", 0, 9, regular=False), 0, wall)
    assert not t.ready and not t.pending
    t.seen(_entry(b"p", 0, 10, regular=False), 0, wall)  # a new version of the odd file
    t.seen(_entry(b"a", 6, 8), 0, wall)  # a new version: examined (hash decides if it is new)
    assert t.take_ready(1) == [b"p"] and t.take_ready(5) == [b"a"]


def test_created_is_only_a_candidate_and_close_completes() -> None:
    t = Tracker(settle=10, trust_ctime=True, known={}, rejected={})
    t.candidate(b"a", now=0)
    assert not t.ready
    t.complete(b"a")
    assert t.take_ready(10) == [b"a"] and not t.pending
    t.candidate(b"b", 0)
    t.forget(b"b")
    assert not t.pending


def test_state_store_round_trip(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.record("w", [(b"a\xff", Known(1, 2, "s1"), "id1")], [(b"p", 0, 3, "FIFO")])
    store.record("w", [(b"a\xff", Known(4, 5, "s2"), "id2")], [])
    store.touch("w", [(b"a\xff", 4, 6)])
    store.record("other", [(b"a\xff", Known(9, 9, "s9"), "id9")], [])
    store.close()
    known, rejected = StateStore(tmp_path).load("w")
    assert known == {b"a\xff": Known(4, 6, "s2")} and rejected == {b"p": (0, 3)}


def test_state_store_is_shared_by_watches_recording_at_once(tmp_path: Path) -> None:
    """Every watch records from its own worker thread through one connection (a transaction
    started while another is open used to fail: 'cannot start a transaction within a transaction')."""
    import threading

    store = StateStore(tmp_path)
    errors: list[BaseException] = []

    def record(watch: str) -> None:
        try:
            for i in range(100):
                store.record(watch, [(b"f%d" % i, Known(i, i, "s"), "id")], [])
                store.touch(watch, [(b"f%d" % i, i + 1, i + 1)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(f"w{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(len(store.load(f"w{n}")[0]) == 100 for n in range(8))
