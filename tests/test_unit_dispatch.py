"""Pure parts of dispatch: batch grouping and closing rules, file/batch placeholders in the
config, and the runner's preparation of a file or batch run (real files, no bus)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from services.runner.execute import render_argv
from services.runner.inputs import prepare
from services.watcher.batch_state import batch_file, close_reason, group_of, new_batch
from shared.config import ConfigError, JobSpec, Overlap, parse_config
from shared.events import BatchInfo, Trigger, file_event_id
from shared.files import PathRefused, event_for
from shared.watch_config import BatchRule, WatchConfig


def _event(tmp_path: Path, rel: bytes, data: bytes = b"x") -> tuple[WatchConfig, object]:
    path = os.path.join(os.fsencode(tmp_path), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    watch = WatchConfig(name="w", path=str(tmp_path))
    return watch, event_for("w", str(tmp_path), rel, os.lstat(path))


def test_folder_grouping_uses_the_first_level_folder_and_gap_one_group(tmp_path: Path) -> None:
    _, deep = _event(tmp_path, b"flight\xff/sub/a.jpg")
    _, top = _event(tmp_path, b"b.jpg")
    folder, gap = BatchRule(watch="w"), BatchRule(watch="w", group_by="gap")  # type: ignore[arg-type]
    assert group_of(folder, deep) == b"flight\xff"  # type: ignore[arg-type]
    assert group_of(folder, top) == b""  # type: ignore[arg-type]
    assert group_of(gap, deep) == b""  # type: ignore[arg-type]


def test_close_rules_in_order(tmp_path: Path) -> None:
    _, ev = _event(tmp_path, b"f/a.jpg")
    rule = BatchRule(watch="w", quiet=10, max_wait=100, manifest="*.done", expected_count=3)
    batch = new_batch("job", ev, b"f", now=1000.0)  # type: ignore[arg-type]
    assert close_reason(batch, rule, 2000, 10**6) is None, "an empty batch never closes"
    batch.add(batch_file(ev), 1000.0, rule)  # type: ignore[arg-type]
    assert not batch.add(batch_file(ev), 1001.0, rule), "the same file version joins once"  # type: ignore[arg-type]
    assert close_reason(batch, rule, 1009.9, 10**6) is None
    assert close_reason(batch, rule, 1010.0, 10**6) == "quiet"
    assert close_reason(batch, rule, 1005.0, 10) == "full"
    for i in range(1, 40):  # keeps arriving: never quiet, so max_wait ends it
        f = batch_file(ev).model_copy(update={"id": f"id{i}", "rel_path": f"f/{i}.jpg"})
        batch.files[f.id], batch.arrived[f.id] = f, 1000.0 + i * 5
    rule_no_count = rule.model_copy(update={"expected_count": None})
    assert close_reason(batch, rule_no_count, 1100.0, 10**6) == "max_wait"
    assert batch.info("max_wait", 1100.0).partial and not batch.info("quiet", 1100.0).partial
    assert close_reason(batch, rule, 1001.0, 10**6) == "count"
    marker = batch_file(ev).model_copy(update={"id": "m", "rel_path": "f/flight.done"})
    batch.add(marker, 1002.0, rule)
    assert close_reason(batch, rule, 1002.0, 10**6) == "manifest"


def test_header_round_trip_keeps_non_utf8_folder(tmp_path: Path) -> None:
    from services.watcher.batch_state import OpenBatch

    _, ev = _event(tmp_path, b"fl\xffight/a.jpg")
    batch = new_batch("job", ev, b"fl\xffight", 5.0)  # type: ignore[arg-type]
    again = OpenBatch.from_header(batch.header())
    assert (again.id, again.group, again.opened_at, again.watch) == (batch.id, b"fl\xffight", 5.0, "w")


def test_open_flights_as_the_dashboard_reads_them_from_kv(tmp_path: Path) -> None:
    """The dispatcher's KV entries (shared/flights.py's layout) summed up as open flights: files so
    far, bytes, first and last arrival; a header without files (closed, purge unfinished) and an
    unreadable entry are left out; a watch filter applies."""
    from shared import wire
    from shared.flights import file_entry, open_flights

    _, ev = _event(tmp_path, b"flight_1/a.jpg", b"12345")
    batch = new_batch("job", ev, b"flight_1", 100.0)  # type: ignore[arg-type]
    gone = new_batch("job", ev.model_copy(update={"id": "other"}), b"old", 50.0)  # type: ignore[attr-defined]
    f1 = batch_file(ev)  # type: ignore[arg-type]
    f2 = f1.model_copy(update={"id": "f2", "rel_path": "flight_1/b.jpg", "size": 7})
    entries = {wire.batch_header_key(batch.id): batch.header(), wire.batch_header_key(gone.id): gone.header(),
               wire.batch_file_key(batch.id, f1.id): file_entry(f1, 101.0),
               wire.batch_file_key(batch.id, f2.id): file_entry(f2, 103.5),
               wire.batch_file_key(batch.id, "bad"): b"not json", wire.DISPATCH_LEADER_KEY: b"lease"}
    [flight] = open_flights(entries)
    assert (flight["id"], flight["folder"], flight["state"], flight["files"], flight["bytes"]) == (
        batch.id, "flight_1", "open", 2, 12)
    assert flight["first_arrival"] == "1970-01-01T00:01:41+00:00" and flight["last_arrival"].startswith("1970-01-01T00:01:43")
    assert [f["rel_path"] for f in flight["file_list"]] == ["flight_1/a.jpg", "flight_1/b.jpg"]
    assert open_flights(entries, watch="w") and not open_flights(entries, watch="elsewhere")


def _config(run: list[str], when: str) -> str:
    return yaml.safe_dump({"folder_watches": [{"name": "w", "path": "/srv"}],
                           "jobs": [{"name": "j", "type": "image_processing", "run": run, **yaml.safe_load(when)}]})


@pytest.mark.parametrize(("run", "when", "error"), [
    (["echo", "{file.path}"], "schedule: '* * * * *'", "placeholder {file.path} in run: needs `on_file:`"),
    (["echo", "{batch.manifest}"], "on_file: w", "placeholder {batch.manifest} in run: needs `on_batch:`"),
    (["echo", "{file.nope}"], "on_file: w", "unknown placeholder {file.nope}"),
    (["echo", "{file}"], "on_file: w", "unknown placeholder {file}"),
    (["echo", "{file.size:d}"], "on_file: w", "cannot fill placeholders"),
    (["echo", "{file.path}"], "{on_file: w, overlap: skip}", "overlap: skip would drop files"),
])
def test_config_refuses_misplaced_or_unknown_file_placeholders(run: list[str], when: str, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_load(_config(run, when)))
    assert any("job 'j'" in p and error in p for p in info.value.problems), info.value.problems


def test_file_jobs_queue_by_default_and_accept_their_placeholders() -> None:
    config = parse_config(yaml.safe_load(_config(["cp", "--", "{file.path}", "/out/{file.name}"], "on_file: w")))
    assert config.jobs[0].overlap is Overlap.QUEUE
    config = parse_config(yaml.safe_load(_config(["x", "{batch.manifest}", "{batch.count}"], "on_batch: {watch: w}")))
    assert config.jobs[0].overlap is Overlap.QUEUE
    config = parse_config(yaml.safe_load(_config(["x"], "{on_file: w, overlap: allow}")))
    assert config.jobs[0].overlap is Overlap.ALLOW
    assert parse_config(yaml.safe_load(_config(["x"], "schedule: '* * * * *'"))).jobs[0].overlap is Overlap.SKIP


def _spec(when: str, run: list[str]) -> JobSpec:
    job = parse_config(yaml.safe_load(_config(run, when))).jobs[0]
    return JobSpec(job=job, timezone="UTC", cwd="/", defined_at=datetime.now(UTC))


def test_file_run_gets_one_argv_element_per_placeholder_byte_exact(tmp_path: Path) -> None:
    rel = b"f1/-n $(x)\n\xff.jpg"
    watch, ev = _event(tmp_path, rel, b"abc")
    spec = _spec("on_file: w", ["t", "{file.name}", "--", "{file.path}", "{file.size}/{file.id}/{file.watch}"])
    trigger = Trigger(run_id="r", job="j", kind="file", created_at=datetime.now(UTC),
                      data=ev.model_dump(mode="json", exclude_none=True))  # type: ignore[attr-defined]
    inputs = prepare(spec, trigger, {"w": watch})
    assert inputs is not None
    argv = render_argv(spec.job.run or [], {**inputs.values})
    assert [os.fsencode(a) for a in argv] == [b"t", b"-n $(x)\n\xff.jpg", b"--",
                                               os.path.join(os.path.realpath(os.fsencode(tmp_path)), rel),
                                               f"3/{ev.id}/w".encode()]  # type: ignore[attr-defined]
    assert os.fsencode(inputs.env["CROPCRON_FILE_REL_PATH"]) == rel
    with pytest.raises(PathRefused, match="not in the applied config"):
        prepare(spec, trigger, {})
    other = _spec("on_file: w", ["t"]).model_copy()
    with pytest.raises(PathRefused, match="does not belong"):
        prepare(other, trigger.model_copy(update={"data": {**trigger.data, "watch": "v"}}), {"w": watch, "v": watch})


def test_batch_run_writes_a_manifest_and_leaves_out_refused_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    watch, a = _event(root, b"f\xff/a.jpg")
    _, b = _event(root, b"f\xff/b.jpg")
    os.symlink("/etc/passwd", root / "link.jpg")
    link = event_for("w", str(root), b"link.jpg", os.lstat(root / "link.jpg"))
    info = BatchInfo(id="B", watch="w", folder="f\ufffd", partial=False, reason="quiet", opened_at=datetime.now(UTC),
                     closed_at=datetime.now(UTC), files=[batch_file(e) for e in (a, b, link)])  # type: ignore[arg-type]
    spec = _spec("on_batch: {watch: w}", ["t", "{batch.manifest}", "{batch.folder}", "{batch.count}"])
    trigger = Trigger(run_id="B", job="j", kind="batch", created_at=datetime.now(UTC),
                      data={"batch": info.model_dump(mode="json", exclude_none=True)})
    inputs = prepare(spec, trigger, {"w": watch})
    assert inputs is not None and inputs.tmpdir is not None
    argv = render_argv(spec.job.run or [], inputs.values)
    assert os.fsencode(argv[2]) == b"f\xff" and argv[3] == "2"
    with open(argv[1], encoding="utf-8") as f:
        manifest = json.load(f)
    assert [x["rel_path_b64"] for x in manifest["files"]] == [a.rel_path_b64, b.rel_path_b64]  # type: ignore[attr-defined]
    assert manifest["refused"][0]["rel_path"] == "link.jpg" and "symbolic link" in manifest["refused"][0]["reason"]
    assert inputs.refused and manifest["count"] == 2 and manifest["root"] == str(root)
    assert file_event_id("w", b"f\xff/a.jpg", 1, a.mtime_ns) == a.id  # type: ignore[attr-defined]
    inputs.close()
    assert not os.path.exists(argv[1]), "the manifest is removed after the run"


def test_example_jobs_checksum_a_hostile_name_and_index_a_flight_manifest(tmp_path: Path) -> None:
    import hashlib
    import struct
    import subprocess
    import sys

    root = tmp_path / "root"
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", 640, 480) + b"\x00" * 32
    watch, a = _event(root, b"flight 1/-rf \xff.png", png)
    _, b = _event(root, b"flight 1/b.jpg", b"\xff\xd8\xff\xc0\x00\x11\x08\x01\xe0\x02\x80" + b"\x00" * 20)
    examples = Path(__file__).resolve().parent.parent / "examples"
    ledger = tmp_path / "ledger.jsonl"
    path = os.path.join(os.fsencode(root), b"flight 1/-rf \xff.png")
    subprocess.run([sys.executable, examples / "jobs" / "checksum_image.py", "--ledger", ledger, "--",
                    os.fsdecode(path)], check=True, capture_output=True)
    entry = json.loads(ledger.read_text())
    assert entry["sha256"] == hashlib.sha256(png).hexdigest() and entry["pixels"] == [640, 480]
    info = BatchInfo(id="B1", watch="w", folder="flight 1", partial=False, reason="manifest",
                     opened_at=datetime.now(UTC), closed_at=datetime.now(UTC),
                     files=[batch_file(e) for e in (a, b)])  # type: ignore[arg-type]
    spec = _spec("on_batch: {watch: w}", ["t", "--", "{batch.manifest}"])
    trigger = Trigger(run_id="B1", job="j", kind="batch", created_at=datetime.now(UTC),
                      data={"batch": info.model_dump(mode="json", exclude_none=True)})
    inputs = prepare(spec, trigger, {"w": watch})
    assert inputs is not None
    try:
        subprocess.run([sys.executable, examples / "jobs" / "flight_summary.py", "--out", tmp_path / "flights", "--",
                        inputs.values["batch"].manifest], check=True, capture_output=True)
    finally:
        inputs.close()
    index = json.loads((tmp_path / "flights" / "B1.json").read_text())
    assert index["files"] == 2 and index["missing"] == [] and index["by_extension"] == {".png": 1, ".jpg": 1}
    assert index["bytes"] == len(png) + 31
