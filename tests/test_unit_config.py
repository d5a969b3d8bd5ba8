"""Config validation: every bad config is rejected with a message naming the job, the field and why."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import (
    JOB_TYPES,
    Backoff,
    Catchup,
    ConfigError,
    Overlap,
    load_config,
    parse_config,
    to_specs,
)
from shared.durations import format_duration, parse_duration
from shared.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent
FARM = ROOT / "examples" / "farm.yaml"

# A copy of examples/farm.yaml's shape, inline so the test does not depend on the example file.
VALID = """
system:
  timezone: Asia/Seoul
  history_retention: 90d
  name: farm-edge        # tolerated: the prototype's extra system keys
  log_level: INFO

jobs:
  - name: edge_heartbeat
    type: folder_monitoring
    interval: 5s
    priority: 3
    max_retries: 0
    timeout: 30s
    catchup: skip
    run: ["{python}", jobs/heartbeat.py, "{run_id}"]

  - name: morning_image_processing
    type: image_processing
    schedule: "0 6 * * *"
    priority: 8
    max_retries: 3
    retry_delay: 5m
    backoff: exponential
    timeout: 2h
    catchup: latest
    catchup_window: 3h
    run: ["{python}", jobs/process_images.py, --session, morning, --run-id, "{run_id}"]

  - name: nightly_backup
    type: database_backup
    schedule: "0 2 * * *"
    priority: 9
    max_retries: 5
    retry_delay: 1m
    backoff: exponential
    retry_delay_max: 30m
    timeout: 1h
    catchup: latest
    catchup_window: 12h
    run: ["{python}", jobs/backup.py, --keep, "14"]

  - name: weekly_report
    type: report_generation
    schedule: "0 7 * * 1"
    timeout: 30m
    call: jobs.tasks:weekly_report

  - name: monthly_cleanup
    type: data_cleanup
    schedule: "0 3 1 * *"
    priority: 2
    timeout: 1h
    overlap: skip
    call: jobs.tasks:cleanup

  - name: one_shot
    type: report_generation
    run_at: "2026-12-01T06:00:00+09:00"
    timezone: Europe/Berlin
    call: jobs.tasks:weekly_report

  - name: seconds_job
    type: batch_detection
    schedule: "*/10 * * * * *"
    backoff: fixed
    overlap: queue
    concurrency: 3
    run: [/bin/true]
"""


def _job(**fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"name": "nightly_backup", "type": "database_backup", "run": ["true"]}
    job.update(fields)
    return {k: v for k, v in job.items() if v is not None}


def _problems(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    problems = info.value.problems
    assert problems, "ConfigError without problems"
    assert str(info.value) == "\n".join(problems)
    return problems


def _one_problem(**fields: Any) -> str:
    problems = _problems({"jobs": [_job(**fields)]})
    assert len(problems) == 1, problems
    return problems[0]


# -- valid -------------------------------------------------------------------------------------


def test_valid_config_parses_with_values_and_defaults() -> None:
    config = parse_config(yaml.safe_load(VALID))
    assert config.system.timezone == "Asia/Seoul"
    assert config.system.history_retention == 90 * 86400
    jobs = {j.name: j for j in config.jobs}
    assert list(jobs) == [
        "edge_heartbeat", "morning_image_processing", "nightly_backup", "weekly_report",
        "monthly_cleanup", "one_shot", "seconds_job",
    ]
    hb = jobs["edge_heartbeat"]
    assert hb.interval == 5.0 and hb.timeout == 30.0 and hb.catchup is Catchup.SKIP
    assert hb.run == ["{python}", "jobs/heartbeat.py", "{run_id}"]
    assert hb.max_retries == 0 and hb.priority == 3
    morning = jobs["morning_image_processing"]
    assert morning.schedule == "0 6 * * *" and morning.retry_delay == 300 and morning.timeout == 7200
    assert morning.catchup_window == 3 * 3600 and morning.backoff is Backoff.EXPONENTIAL
    backup = jobs["nightly_backup"]
    assert backup.retry_delay_max == 1800 and backup.catchup_window == 12 * 3600
    report = jobs["weekly_report"]
    assert report.call == "jobs.tasks:weekly_report" and report.run is None
    # defaults
    assert report.priority == 5 and report.max_retries == 3 and report.retry_delay == 30
    assert report.catchup is Catchup.LATEST and report.overlap is Overlap.SKIP
    assert report.enabled is True and report.concurrency == 1 and report.output_lines == 20
    shot = jobs["one_shot"]
    assert shot.run_at == datetime(2026, 11, 30, 21, 0, tzinfo=UTC)
    assert shot.timezone == "Europe/Berlin"
    sec = jobs["seconds_job"]
    assert sec.backoff is Backoff.FIXED and sec.overlap is Overlap.QUEUE and sec.concurrency == 3


def test_example_farm_yaml_loads(tmp_path: Path) -> None:
    config = load_config(FARM)
    names = [j.name for j in config.jobs]
    assert "nightly_backup" in names and len(names) == len(set(names))
    assert config.system.timezone == "Asia/Seoul"
    # and the inline copy loads from a file too
    path = tmp_path / "farm.yaml"
    path.write_text(VALID, encoding="utf-8")
    assert [j.name for j in load_config(path).jobs] == [j.name for j in parse_config(yaml.safe_load(VALID)).jobs]


def test_empty_document_is_an_empty_config() -> None:
    assert parse_config(None).jobs == []
    assert parse_config({}).system.timezone == "UTC"


# -- bad jobs: one message each, naming job, field and reason ---------------------------------


def test_invalid_cron_minute() -> None:
    msg = _one_problem(schedule="61 * * * *")
    assert msg.startswith("job 'nightly_backup': field 'schedule':")
    assert "61 * * * *" in msg and "minute" in msg.lower()


def test_cron_with_wrong_field_count() -> None:
    msg = _one_problem(schedule="0 0 *")
    assert msg.startswith("job 'nightly_backup': field 'schedule':")
    assert "3 fields" in msg


def test_unknown_job_time_zone() -> None:
    msg = _one_problem(schedule="0 2 * * *", timezone="Mars/Olympus_Mons")
    assert msg.startswith("job 'nightly_backup': field 'timezone':")
    assert "unknown time zone" in msg and "Mars/Olympus_Mons" in msg


def test_unknown_system_time_zone() -> None:
    problems = _problems({"system": {"timezone": "Europe/Atlantis"}, "jobs": [_job(schedule="0 2 * * *")]})
    assert len(problems) == 1, problems
    assert problems[0].startswith("field 'system.timezone':")
    assert "unknown time zone" in problems[0] and "Europe/Atlantis" in problems[0]


def test_negative_retries() -> None:
    msg = _one_problem(max_retries=-1)
    assert msg.startswith("job 'nightly_backup': field 'max_retries':")
    assert "greater than or equal to 0" in msg


def test_unknown_type_lists_known_types() -> None:
    msg = _one_problem(type="video_editing")
    assert msg.startswith("job 'nightly_backup': field 'type':")
    assert "unknown type 'video_editing'" in msg
    assert all(t in msg for t in JOB_TYPES)


def test_duplicate_names() -> None:
    problems = _problems({"jobs": [_job(), _job(run=["false"]), _job(name="other")]})
    assert problems == ["job 'nightly_backup': field 'name': duplicate job name (used 2 times)"]


def test_no_command() -> None:
    msg = _one_problem(run=None)
    assert msg.startswith("job 'nightly_backup':")
    assert "exactly one of run" in msg and "call" in msg


def test_both_run_and_call() -> None:
    msg = _one_problem(call="jobs.tasks:cleanup")
    assert msg.startswith("job 'nightly_backup':")
    assert "exactly one of run" in msg and "call" in msg


@pytest.mark.parametrize("expr", ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6 *", "0 0 0 31 2 *"])
def test_schedule_that_never_fires(expr: str) -> None:
    msg = _one_problem(schedule=expr)
    assert msg.startswith("job 'nightly_backup': field 'schedule':")
    assert "never fires" in msg and expr in msg


def test_leap_day_schedule_is_accepted() -> None:
    config = parse_config({"jobs": [_job(schedule="0 0 29 2 *")]})
    assert config.jobs[0].schedule == "0 0 29 2 *"


def test_unknown_placeholder_in_run() -> None:
    msg = _one_problem(run=["process", "--file", "{file}"])
    assert msg.startswith("job 'nightly_backup': field 'run':")
    assert "unknown placeholder {file}" in msg and "run_id" in msg


def test_escaped_braces_are_not_placeholders() -> None:
    config = parse_config({"jobs": [_job(run=["echo", "{{file}}", "{job}"])]})
    assert config.jobs[0].run == ["echo", "{{file}}", "{job}"]


@pytest.mark.parametrize("arg", ["{job:{file}}", "{attempt:d}", "{job!z}", "{job", "job}", "{job.upper}",
                                 "{job[0]}", "{}", "{0}"])
def test_placeholder_that_would_fail_at_run_time_is_rejected(arg: str) -> None:
    # a format spec or conversion that render_argv cannot apply to a string value, a nested
    # unknown placeholder, or unbalanced braces: rejected at load, not when the job first runs
    msg = _one_problem(run=["echo", arg])
    assert msg.startswith("job 'nightly_backup': field 'run':")
    assert repr(arg) in msg


def test_name_reserved_prefix() -> None:
    msg = _one_problem(name="_system")
    assert msg.startswith("job '_system': field 'name':") and "'_'" in msg


def test_empty_run() -> None:
    msg = _one_problem(run=[])
    assert msg.startswith("job 'nightly_backup': field 'run':") and "non-empty" in msg


@pytest.mark.parametrize("target", ["not a target", "jobs.tasks", "jobs.tasks:", ":func", "jobs..tasks:f",
                                    "jobs.tasks:clean-up"])
def test_bad_call_target(target: str) -> None:
    msg = _one_problem(run=None, call=target)
    assert msg.startswith("job 'nightly_backup': field 'call':")
    assert "package.module:function" in msg and repr(target) in msg


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"schedule": "0 2 * * *", "interval": "5m"}, "schedule, interval"),
        ({"interval": "5m", "run_at": "2026-12-01T06:00:00+00:00"}, "interval, run_at"),
        ({"schedule": "0 2 * * *", "run_at": "2026-12-01T06:00:00+00:00"}, "schedule, run_at"),
    ],
)
def test_two_of_schedule_interval_run_at(fields: dict[str, Any], named: str) -> None:
    msg = _one_problem(**fields)
    assert msg.startswith("job 'nightly_backup':")
    assert "only one of schedule, interval, run_at" in msg and named in msg


def test_run_at_without_offset() -> None:
    msg = _one_problem(run_at="2026-12-01T06:00:00")
    assert msg.startswith("job 'nightly_backup': field 'run_at':") and "UTC offset" in msg


def test_unknown_field_typo() -> None:
    msg = _one_problem(schedul="0 2 * * *")
    assert msg == "job 'nightly_backup': field 'schedul': unknown field (check the spelling)"


def test_unknown_top_level_section() -> None:
    problems = _problems({"jobz": [], "jobs": [_job()]})
    assert problems == ["field 'jobz': unknown top-level section"]


@pytest.mark.parametrize(("name", "why"), [
    ("", "must not be empty"), ("x" * 65, "65 characters long; at most 64"), ("가" * 65, "at most 64"),
    (" backup", "start or end with a space"), ("백업 ", "start or end with a space"),
    ("a\tb", "control characters (found U+0009)"), ("a\x00b", "U+0000"), ("일일\n백업", "U+000A"),
    ("abc\u202efdp.exe", "U+202E")])
def test_bad_job_name(name: str, why: str) -> None:
    msg = _one_problem(name=name)
    assert msg.startswith(f"job {name!r}: field 'name':")
    assert why in msg, msg


@pytest.mark.parametrize(
    ("field", "value"), [("priority", 11), ("priority", 0), ("concurrency", 0), ("retry_jitter", 1.5)]
)
def test_out_of_range_policies(field: str, value: Any) -> None:
    msg = _one_problem(**{field: value})
    assert msg.startswith(f"job 'nightly_backup': field '{field}':")


@pytest.mark.parametrize(("field", "value"), [("timeout", 0), ("retry_delay", "0s"), ("interval", "500ms")])
def test_zero_or_tiny_durations(field: str, value: Any) -> None:
    msg = _one_problem(**{field: value})
    assert msg.startswith(f"job 'nightly_backup': field '{field}':")


def test_several_problems_are_all_listed() -> None:
    raw = {
        "system": {"timezone": "Nowhere/Special"},
        "jobs": [
            _job(name="a", schedule="61 * * * *"),  # 1: bad cron
            _job(name="b", max_retries=-2, type="nope"),  # 2, 3: two field errors in one job
            _job(name="c", run=None),  # 4: no command
            _job(name="d", schedul="0 * * * *"),  # 5: typo
            _job(name="e\x07f"),  # 6: bad name (a control character)
            _job(name="g"),
            _job(name="g"),  # 7: duplicate
            _job(name="h", schedule="0 0 31 2 *"),  # 8: never fires
        ],
    }
    problems = _problems(raw)
    assert len(problems) == 9, "\n".join(problems)  # + 1 for the system time zone
    text = "\n".join(problems)
    for expected in [
        "field 'system.timezone'",
        "job 'a': field 'schedule'",
        "job 'b': field 'max_retries'",
        "job 'b': field 'type'",
        "job 'c': definition",
        "job 'd': field 'schedul'",
        "job 'e\\x07f': field 'name'",
        "job 'g': field 'name': duplicate",
        "job 'h': field 'schedule'",
    ]:
        assert expected in text, expected


def test_job_without_name_is_located_by_position() -> None:
    problems = _problems({"jobs": [_job(name="ok"), {"type": "database_backup", "run": ["true"]}]})
    assert problems == ["job #2: field 'name': Field required"]


def test_not_a_mapping() -> None:
    assert _problems(["jobs"]) == ["config: expected a mapping with 'system' and 'jobs'"]
    assert _problems({"jobs": {"a": 1}}) == ["field 'jobs': expected a list of jobs"]


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs: [\n  - name: x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text(yaml.safe_dump({"jobs": [_job(schedule="61 * * * *"), _job(name="x", type="t")]}),
                       encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(invalid)
    assert len(info.value.problems) == 2


# -- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400), ("1w", 604800),
     ("45", 45), ("1.5", 1.5), (" 5M ", 300), ("1h 30m", 5400), (30, 30), (2.5, 2.5),
     (timedelta(minutes=2), 120), ("0s", 0)],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 minutes", "-5s", True, False, "", "5x", "m5", "5m30", "1h-30m", None,
                                 [5], -1, -0.5])
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_parse_duration_rejects_non_finite(bad: float) -> None:
    # YAML .nan / .inf: accepted, they would crash Schedule.next_after for an interval job
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize("field", ["interval", "timeout", "retry_delay", "catchup_window", "retry_delay_max"])
@pytest.mark.parametrize("text", [".nan", ".inf"])
def test_non_finite_durations_rejected_by_config(field: str, text: str) -> None:
    doc = f"jobs:\n  - name: nightly_backup\n    type: database_backup\n    run: ['true']\n    {field}: {text}\n"
    problems = _problems(yaml.safe_load(doc))
    assert len(problems) == 1 and problems[0].startswith(f"job 'nightly_backup': field '{field}':")


@pytest.mark.parametrize("field", ["interval", "timeout", "retry_delay", "catchup_window", "retry_delay_max"])
def test_absurd_durations_are_refused_not_left_to_crash_the_timer(field: str) -> None:
    # 99999999999w passed validation once and made the timer raise OverflowError at every start
    msg = _one_problem(**{field: "99999999999w"})
    assert msg.startswith(f"job 'nightly_backup': field '{field}':") and "at most 3650d" in msg
    assert _problems({"system": {"history_retention": "99999999999w"}})[0].startswith("field 'system.history_retention'")
    assert parse_duration("3650d") == 3650 * 86400


def test_a_definition_too_large_to_store_is_refused_naming_the_field() -> None:
    # one job is one KV message; a 1-2 MB field made `apply` fail halfway through the jobs
    msg = _one_problem(env={"CERT": "x" * (1536 * 1024)})
    assert msg.startswith("job 'nightly_backup': definition is 1536 KiB, at most 256 KiB") and "'env'" in msg
    assert _one_problem(description="d" * (300 * 1024)).endswith("(field 'description' is the largest)")
    parse_config({"jobs": [_job(description="d" * (200 * 1024))]})  # large but storable


def test_non_utf8_config_is_named_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("jobs:\n  - name: x\n    type: data_cleanup\n    description: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: line 4: not UTF-8 text (byte 0xe9 at offset 61); save the file as UTF-8"]


def test_durations_in_config_fields() -> None:
    for value in ["5 minutes", "-5s", True]:
        msg = _one_problem(timeout=value)
        assert msg.startswith("job 'nightly_backup': field 'timeout':")
        assert repr(value) in msg and "duration" in msg


@pytest.mark.parametrize("seconds", [0.25, 5, 90, 300, 5400, 86400 + 3661])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


# -- to_specs ----------------------------------------------------------------------------------------


def _config(**job: Any) -> Any:
    return parse_config({"system": {"timezone": "Europe/Berlin"}, "jobs": [_job(**job)]})


def test_to_specs_resolves_defaults(tmp_path: Path) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    specs = to_specs(_config(schedule="0 2 * * *", cwd="sub"), tmp_path, {}, now)
    spec = specs["nightly_backup"]
    assert spec.timezone == "Europe/Berlin"
    assert spec.cwd == str((tmp_path / "sub").resolve())
    assert spec.defined_at == now
    absolute = to_specs(_config(schedule="0 2 * * *", cwd="/opt"), tmp_path, {}, now)["nightly_backup"]
    assert absolute.cwd == str(Path("/opt").resolve())
    default = to_specs(_config(schedule="0 2 * * *"), tmp_path, {}, now)["nightly_backup"]
    assert default.cwd == str(tmp_path.resolve())


def test_to_specs_keeps_defined_at_when_schedule_unchanged(tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(days=3)
    first = to_specs(_config(schedule="0 2 * * *"), tmp_path, {}, t0)
    # same schedule, other policies changed: still defined at t0 (no catch-up before it)
    again = to_specs(_config(schedule="0 2 * * *", priority=9, timeout="5m", run=["false"]), tmp_path, first, t1)
    assert again["nightly_backup"].defined_at == t0
    assert again["nightly_backup"].job.priority == 9


@pytest.mark.parametrize(
    "changed",
    [
        {"schedule": "0 3 * * *"},
        {"schedule": "0 2 * * *", "timezone": "Asia/Seoul"},
        {"schedule": "0 2 * * *", "enabled": False},
        {"interval": "1h"},
    ],
)
def test_to_specs_resets_defined_at_when_schedule_changes(tmp_path: Path, changed: dict[str, Any]) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = t0 + timedelta(days=3)
    first = to_specs(_config(schedule="0 2 * * *"), tmp_path, {}, t0)
    again = to_specs(_config(**changed), tmp_path, first, t1)
    assert again["nightly_backup"].defined_at == t1


def test_to_specs_new_job_gets_now(tmp_path: Path) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = to_specs(_config(schedule="0 2 * * *"), tmp_path, {}, t0)
    other = parse_config({"jobs": [_job(name="fresh", schedule="0 2 * * *")]})
    t1 = t0 + timedelta(hours=1)
    assert to_specs(other, tmp_path, first, t1)["fresh"].defined_at == t1


def test_valid_schedules_are_usable() -> None:
    # what validation accepts, Schedule can evaluate
    config = parse_config(yaml.safe_load(VALID))
    start = datetime(2026, 3, 1, tzinfo=UTC)
    for job in config.jobs:
        if job.schedule:
            assert Schedule(cron=job.schedule).next_after(start) is not None


# -- manual runs -----------------------------------------------------------------------------


def test_manual_trigger_for_scheduled_jobs_and_refused_for_jobs_on_files(tmp_path: Path) -> None:
    from shared.manual import CannotRunNow, manual_trigger

    config = parse_config({
        "folder_watches": [{"name": "drops", "path": str(tmp_path)}],
        "jobs": [_job(priority=9), _job(name="per_file", on_file="drops", run=["true", "{file.path}"]),
                 _job(name="per_flight", on_batch={"watch": "drops"}, run=["true", "{batch.manifest}"])]})
    specs = to_specs(config, tmp_path, {})
    subject, trigger = manual_trigger(specs["nightly_backup"], "dashboard (operator)")
    assert subject == "cropcron.trigger.high.nightly_backup"
    assert trigger.kind == "manual" and trigger.job == "nightly_backup" and trigger.requested_by == "dashboard (operator)"
    assert manual_trigger(specs["nightly_backup"], "cli")[1].run_id != trigger.run_id  # each run its own id
    for name, what in (("per_file", "once per arrived file of watch 'drops'"),
                       ("per_flight", "once per flight batch of watch 'drops'")):
        with pytest.raises(CannotRunNow, match=what):
            manual_trigger(specs[name], "cli")
