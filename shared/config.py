"""The YAML config: the prototype's format (system.timezone, jobs: ...), extended with what a job
runs and its policies. Validated with pydantic; every error names the job, the field and why."""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, TypeVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.chores import CHORES, Builtin, absolute, chore_problems
from shared.durations import Duration
from shared.i18n import LOCALES, _, resolve_locale, using
from shared.names import check_name, fold_name, normalise_name
from shared.notify_config import NotificationsConfig, parse_notifications
from shared.schedule import ScheduleError, validate_cron
from shared.sun_config import Location, SunRule, sun_problem
from shared.watch_config import BatchRule, WatchConfig

# The prototype's job types: labels for grouping and statistics.
JobType = Literal[
    "image_processing",
    "video_analysis",
    "batch_detection",
    "database_backup",
    "report_generation",
    "folder_monitoring",
    "data_cleanup",
]
JOB_TYPES: tuple[str, ...] = get_args(JobType)

# Names usable as {placeholders} in `run:` arguments. Each is substituted inside one argv
# element, so no value can become two arguments or a shell fragment.
PLACEHOLDERS = frozenset({"run_id", "job", "type", "scheduled_at", "attempt", "trigger", "python"})
# Only in `on_file` jobs: the arrived file (path = absolute, checked inside the watch root by the runner).
FILE_PLACEHOLDERS = frozenset({"file.path", "file.rel_path", "file.name", "file.size", "file.id", "file.watch"})
# Only in `on_batch` jobs: manifest = a JSON file listing the batch's files (argv cannot hold 2,000 paths).
BATCH_PLACEHOLDERS = frozenset({"batch.manifest", "batch.id", "batch.count", "batch.partial", "batch.folder"})
ALL_PLACEHOLDERS = PLACEHOLDERS | FILE_PLACEHOLDERS | BATCH_PLACEHOLDERS


def placeholder_sample() -> dict[str, Any]:
    """Values for a trial substitution: `{file.path}` is attribute access on "file"."""
    sample: dict[str, Any] = dict.fromkeys(PLACEHOLDERS, "x")
    for group, names in (("file", FILE_PLACEHOLDERS), ("batch", BATCH_PLACEHOLDERS)):
        sample[group] = SimpleNamespace(**{n.split(".", 1)[1]: "x" for n in names})
    return sample


def placeholders_in(argv: list[str]) -> set[str]:
    """The placeholder names used in `run:` (unparseable arguments are reported elsewhere)."""
    found: set[str] = set()
    for arg in argv:
        try:
            found.update(field[1] for field in string.Formatter().parse(arg) if field[1])
        except ValueError:
            continue
    return found


M = TypeVar("M", bound=BaseModel)


class Catchup(StrEnum):
    SKIP = "skip"  # instants missed while the timer was down are recorded as missed
    LATEST = "latest"  # run only the most recent missed instant (within the window)
    ALL = "all"  # run every missed instant within the window


class Overlap(StrEnum):
    SKIP = "skip"  # at the concurrency limit: record the new run as skipped
    QUEUE = "queue"  # at the limit: wait for a running one to finish
    ALLOW = "allow"  # no limit


class Backoff(StrEnum):
    FIXED = "fixed"
    EXPONENTIAL = "exponential"


class ConfigError(ValueError):
    """A config that cannot be applied; `problems` lists every reason, one line each, in the
    language of the config (`locale`: its system.locale, or CROPCRON_LOCALE)."""

    def __init__(self, problems: list[str], locale: str | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.locale = locale or resolve_locale(None)


def _tz(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(_("unknown time zone %(zone)s", zone=repr(name))) from exc


class SystemConfig(BaseModel):
    # extra keys from the prototype's system section (name, log_level, ...) are tolerated
    model_config = ConfigDict(extra="ignore")

    timezone: str = "UTC"
    history_retention: Duration = 90 * 86400.0
    # the language of the dashboard, alerts and CLI output (shared/i18n.py; CROPCRON_LOCALE overrides)
    locale: Literal["en", "ko"] = "en"
    # where the farm is: needed by jobs with a `sun:` schedule (shared/sun_schedule.py)
    location: Location | None = None
    # the only folders `cleanup_files` chores may delete in (and below); relative: to the config
    # file's directory (`apply` stores them absolute)
    cleanup_roots: list[str] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str) -> str:
        _tz(value)
        return value

    @field_validator("cleanup_roots")
    @classmethod
    def _check_roots(cls, roots: list[str]) -> list[str]:
        for root in roots:
            if not root.strip():
                raise ValueError("a cleanup root must not be empty")
            if os.path.normpath(root) == "/":
                raise ValueError(_("/ cannot be a cleanup root: name the folders cleanup may touch"))
        return roots


class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    type: JobType
    description: str = ""
    enabled: bool = True
    # when: exactly one of these, or none for a job that runs only on demand
    schedule: str | None = None  # cron, 5 fields or 6 with seconds first
    interval: Duration | None = None
    run_at: datetime | None = None  # one shot
    on_file: str | None = None  # a watch name: one run per complete file (issue 3)
    on_batch: BatchRule | None = None  # one run per flight batch of a watch (issue 3)
    sun: SunRule | None = None  # at a sun event, or while the sun is high, at system.location (issue 14)
    timezone: str | None = None  # default: system.timezone
    # what: exactly one of these
    run: list[str] | None = None
    call: str | None = None  # "package.module:function"
    builtin: Builtin | None = None  # one of cropcron's chores (shared/chores.py)
    cwd: str | None = None  # default: the config file's directory
    env: dict[str, str] = Field(default_factory=dict)
    # variables passed through from the runner's environment (a job gets only the basics otherwise:
    # services/runner/job_env.py); cropcron's own configuration and secrets cannot be passed
    pass_env: list[str] = Field(default_factory=list)
    # the broker user the job runs as, if it must publish or read (credentials in its environment);
    # none by default: a job cannot reach the broker
    nats_user: Literal["uploader", "observer"] | None = None
    # policies
    priority: int = Field(5, ge=1, le=10)
    max_retries: int = Field(3, ge=0, le=50)
    retry_delay: Duration = 30.0
    backoff: Backoff = Backoff.EXPONENTIAL
    retry_delay_max: Duration = 3600.0
    retry_jitter: float = Field(0.1, ge=0.0, le=1.0)
    timeout: Duration = 3600.0
    catchup: Catchup = Catchup.LATEST
    catchup_window: Duration = 3600.0
    overlap: Overlap = Overlap.SKIP
    concurrency: int = Field(1, ge=1, le=1000)
    output_lines: int = Field(20, ge=0, le=1000)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_name(value)  # any Unicode text; its subject key is derived (shared/names.py)

    @field_validator("on_file")
    @classmethod
    def _watch_name(cls, value: str | None) -> str | None:
        return None if value is None else normalise_name(value)

    @field_validator("timezone")
    @classmethod
    def _check_tz(cls, value: str | None) -> str | None:
        if value is not None:
            _tz(value)
        return value

    @field_validator("pass_env")
    @classmethod
    def _check_pass_env(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if name.upper().startswith(("CROPCRON_", "NATS_", "PG")) or name.upper() == "DATABASE_URL":
                raise ValueError(f"{name!r} is cropcron's own configuration or a secret of it; give the job what it "
                                 "needs in env: (or nats_user: for the broker)")
        return names

    @field_validator("schedule")
    @classmethod
    def _check_cron(cls, value: str | None) -> str | None:
        # checked per field (not after the whole job validates) so that one bad field does not
        # hide a bad schedule; whether it fires at all does not depend on the time zone
        if value is not None:
            try:
                validate_cron(value, ZoneInfo("UTC"))
            except ScheduleError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("run")
    @classmethod
    def _check_run(cls, argv: list[str] | None) -> list[str] | None:
        if argv is None:
            return None
        if not argv or not argv[0].strip():
            raise ValueError("must be a non-empty list: [program, arg, ...]")
        sample = placeholder_sample()
        for arg in argv:
            try:
                fields = list(string.Formatter().parse(arg))
            except ValueError as exc:
                raise ValueError(f"bad braces in {arg!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
            for _literal, name, _spec, _conv in fields:
                if name is not None and name not in ALL_PLACEHOLDERS:
                    raise ValueError(
                        f"unknown placeholder {{{name}}} in {arg!r}; known: "
                        + ", ".join(sorted(ALL_PLACEHOLDERS))
                        + " (write {{ and }} for literal braces)"
                    )
            try:  # values are strings: a format spec like {attempt:d} would fail at run time
                arg.format_map(sample)
            except (ValueError, KeyError, IndexError, AttributeError) as exc:
                raise ValueError(f"cannot fill placeholders in {arg!r}: {exc}") from None
        return argv

    @field_validator("call")
    @classmethod
    def _check_call(cls, value: str | None) -> str | None:
        if value is not None:
            module, _colon, func = value.partition(":")
            if not module or not func or not all(p.isidentifier() for p in [*module.split("."), func]):
                raise ValueError(f"must look like 'package.module:function', got {value!r}")
        return value

    @field_validator("timeout", "retry_delay")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(_("must be greater than zero"))
        return value

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float | None) -> float | None:
        if value is not None and value < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("run_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a UTC offset, e.g. 2026-12-01T06:00:00+09:00")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> JobConfig:
        problem = shape_problem(self.model_dump(exclude_unset=True))  # as written: defaults are no choice
        if problem:
            raise ValueError(problem)
        if (self.on_file or self.on_batch) and "overlap" not in self.model_fields_set:
            # every arrival must run: a file arriving while the previous one runs waits its turn
            self.overlap = Overlap.QUEUE
        return self


WHENS = ("schedule", "interval", "run_at", "sun", "on_file", "on_batch")


def shape_problem(job: dict[str, Any]) -> str | None:
    """Which-of rules, checkable on the raw mapping so they are reported even when other fields
    of the job are invalid (pydantic skips model validators then)."""
    whens = [k for k in WHENS if job.get(k) is not None]
    if len(whens) > 1:
        return _("give only one of %(whens)s (got %(got)s)", whens=", ".join(WHENS), got=", ".join(whens))
    whats = [k for k in ("run", "call", "builtin") if job.get(k) is not None]
    if not whats:
        # the prototype's jobs were simulated: its config has no command; say what to add
        return _("give exactly one of run (a command), call (a Python function) or builtin (a chore of "
                 "cropcron's); this job has none: add `run:` (e.g. run: [\"{python}\", jobs/process_images.py]), "
                 "`call:` (e.g. call: jobs.tasks:weekly_report) or `builtin:` (e.g. builtin: {chore: "
                 "cleanup_files, folder: data, older_than: 30d})")
    if len(whats) > 1:
        return _("give exactly one of run (a command), call (a Python function) or builtin (a chore of "
                 "cropcron's); this job has %(got)s", got=", ".join(whats))
    if (job.get("on_file") is not None or job.get("on_batch") is not None) and job.get("overlap") == "skip":
        return ("overlap: skip would drop files that arrive while a run is going on; file-triggered jobs "
                "take queue (the default for them) or allow")
    run = job.get("run")
    if isinstance(run, list) and all(isinstance(a, str) for a in run):
        used = placeholders_in(run)
        for names, when, what in ((FILE_PLACEHOLDERS, "on_file", "the arrived file"),
                                  (BATCH_PLACEHOLDERS, "on_batch", "a flight batch")):
            wrong = sorted(used & names)
            if wrong and job.get(when) is None:
                return (f"placeholder {{{wrong[0]}}} in run: needs `{when}:` (it stands for {what}); "
                        f"this job is not triggered by {when}")
    return None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    system: SystemConfig = Field(default_factory=SystemConfig)
    jobs: list[JobConfig] = Field(default_factory=list)
    # sections the later services own; accepted now so one file serves them all
    folder_watches: list[WatchConfig] = Field(default_factory=list)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)  # issue 4


class JobSpec(BaseModel):
    """A job as applied: what the timer and runners read from the jobs KV bucket."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job: JobConfig
    timezone: str
    cwd: str
    defined_at: datetime  # when this schedule was first applied: no catch-up before it
    location: Location | None = None  # system.location, for `sun:` jobs only

    @property
    def name(self) -> str:
        return self.job.name

    def same_schedule(self, other: JobSpec) -> bool:
        a, b = self.job, other.job
        return (a.schedule, a.interval, a.run_at, a.sun, self.location, self.timezone, a.enabled) == (
            b.schedule,
            b.interval,
            b.run_at,
            b.sun,
            other.location,
            other.timezone,
            b.enabled,
        )


def _locate(loc: tuple[int | str, ...], raw: Any) -> str:
    """('jobs', 3, 'schedule') -> "job 'nightly_backup': field 'schedule'"."""
    if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int):
        name = f"#{loc[1] + 1}"
        try:
            name = repr(raw["jobs"][loc[1]]["name"])
        except (KeyError, IndexError, TypeError):
            pass
        rest = [str(p) for p in loc[2:] if not str(p).startswith(("function-", "literal["))]
        if rest[:1] == ["builtin"] and rest[1:2] and rest[1] in CHORES:
            del rest[1]  # the union's tag: "builtin.folder", as written
        where = _("field '%(field)s'", field=".".join(rest)) if rest else _("definition")
        return _("job %(name)s: %(where)s", name=name, where=where)
    if len(loc) >= 2 and loc[0] == "folder_watches" and isinstance(loc[1], int):
        name = f"#{loc[1] + 1}"
        try:
            name = repr(raw["folder_watches"][loc[1]]["name"])
        except (KeyError, IndexError, TypeError):
            pass
        rest = [str(p) for p in loc[2:]]
        where = _("field '%(field)s'", field=".".join(rest)) if rest else _("definition")
        return _("watch %(name)s: %(where)s", name=name, where=where)
    return _("field '%(field)s'", field=".".join(str(p) for p in loc)) if loc else _("config")


def _explain(err: Any) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return _("unknown field (check the spelling)")
    if err["type"] == "literal_error" and err["loc"][-1] == "type":
        return _("unknown type %(type)s; known types: %(known)s", type=repr(err["input"]), known=", ".join(JOB_TYPES))
    if err["type"] == "union_tag_invalid" and err["loc"][-1] == "builtin":
        return _("unknown chore %(chore)s; known: %(known)s", chore=repr(err["ctx"]["tag"]), known=", ".join(CHORES))
    if err["loc"] and err["loc"][-1] == "builtin" and (err["type"] == "union_tag_not_found"
                                                     or isinstance(err.get("input"), str)):
        return _("name the chore: builtin: {chore: NAME, ...}; known: %(known)s", known=", ".join(CHORES))
    if err["type"] == "literal_error" and err["loc"][-1] == "locale":
        return _("unknown locale %(locale)s; known: %(known)s", locale=repr(err["input"]), known=", ".join(LOCALES))
    return msg


def config_locale(raw: Any) -> str:
    """The language a config's problems are told in: its own system.locale (CROPCRON_LOCALE first)."""
    system = raw.get("system") if isinstance(raw, dict) else None
    locale = system.get("locale") if isinstance(system, dict) else None
    return resolve_locale(locale if isinstance(locale, str) else None)


def parse_config(raw: Any, base_dir: Path | None = None) -> Config:
    """Validate a parsed YAML document; raises ConfigError listing every problem in every job
    (each job is validated on its own, so one bad job does not hide another's problems), in the
    config's own language. With `base_dir` (the config file's directory) the paths of chores are
    also checked on disk (symbolic links resolved)."""
    locale = config_locale(raw)
    with using(locale):
        try:
            return _parse_config(raw, base_dir)
        except ConfigError as exc:
            raise ConfigError(exc.problems, locale) from None


def _parse_config(raw: Any, base_dir: Path | None = None) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([_("config: expected a mapping with 'system' and 'jobs'")])
    problems: list[str] = []

    def collect(exc: ValidationError, prefix: tuple[int | str, ...]) -> None:
        problems.extend(f"{_locate(prefix + tuple(e['loc']), raw)}: {_explain(e)}" for e in exc.errors())

    for key in raw.keys() - Config.model_fields.keys():
        problems.append(_("field %(key)s: unknown top-level section", key=repr(key)))
    system = SystemConfig()
    system_ok = True
    try:
        system = SystemConfig.model_validate(raw.get("system") or {})
    except ValidationError as exc:
        collect(exc, ("system",))
        system_ok = False
    raw_jobs, jobs = _validate_list(raw, "jobs", JobConfig, problems, collect)
    for index, raw_job in enumerate(raw_jobs):
        shape = shape_problem(raw_job) if isinstance(raw_job, dict) else None
        if shape:  # pydantic skips the model validator when a field fails: report it anyway
            problems.append(f"{_locate(('jobs', index), raw)}: {shape}")
    raw_watches, watches = _validate_list(raw, "folder_watches", WatchConfig, problems, collect)
    problems.extend(_semantic_problems(raw_jobs))
    problems.extend(_sun_problems(raw, raw_jobs, system.location))
    problems.extend(_watch_problems(raw_watches, raw_jobs))
    problems.extend(_size_problems(jobs, watches))
    notifications, notify_problems = parse_notifications(raw.get("notifications"))
    problems.extend(notify_problems)
    channels = set(notifications.channels) if notifications is not None else None
    # with a bad system section the roots are unknown: its own problem says so, not each cleanup job
    problems.extend(chore_problems([(j.name, j.builtin) for j in jobs if j.builtin is not None
                                    and (system_ok or j.builtin.chore != "cleanup_files")],
                                   system.cleanup_roots, channels, base_dir))
    problems = list(dict.fromkeys(problems))  # the shape rule can be reported twice
    if problems:
        raise ConfigError(problems)
    try:
        return Config(system=system, jobs=jobs, folder_watches=watches,
                      notifications=notifications or NotificationsConfig())
    except ValidationError as exc:
        collect(exc, ())
        raise ConfigError(problems) from None


# One job (or watch) is one KV message, and the broker refuses a message over its max_payload
# (1 MiB by default): a definition this large is a mistake (a file pasted into `env:`), and
# refusing it here keeps `apply` from failing halfway (`cropcron apply` also checks the
# broker's own limit before writing anything).
MAX_DEFINITION_BYTES = 256 * 1024


def _size_problems(jobs: list[JobConfig], watches: list[WatchConfig]) -> list[str]:
    problems: list[str] = []
    for what, items in (("job", jobs), ("watch", watches)):
        for item in items:
            data = item.model_dump(mode="json", exclude_none=True)
            size = len(json.dumps(data).encode())
            if size > MAX_DEFINITION_BYTES:
                biggest = max(data, key=lambda k: len(json.dumps(data[k]).encode()))
                problems.append(f"{what} {item.name!r}: definition is {size / 1024:.0f} KiB, at most "
                                f"{MAX_DEFINITION_BYTES // 1024} KiB (field {biggest!r} is the largest)")
    return problems


def _semantic_problems(raw_jobs: list[Any]) -> list[str]:
    return _duplicate_names("job", [j.get("name") for j in raw_jobs if isinstance(j, dict)])


def _sun_problems(raw: dict[str, Any], raw_jobs: list[Any], location: Location | None) -> list[str]:
    """`sun:` jobs need system.location, and a threshold the sun reaches there (named per job)."""
    system = raw.get("system")
    if location is None and isinstance(system, dict) and system.get("location") is not None:
        return []  # the location itself is wrong, and reported as such
    problems = []
    for index, job in enumerate(raw_jobs):
        if not isinstance(job, dict) or job.get("sun") is None:
            continue
        try:
            rule = SunRule.model_validate(job["sun"])
        except ValidationError:
            continue  # reported with the job's fields
        problem = sun_problem(rule, location)
        if problem:
            problems.append(f"{_locate(('jobs', index, 'sun'), raw)}: {problem}")
    return problems


def _duplicate_names(what: str, names: list[Any]) -> list[str]:
    """Names that are one name once normalised and case folded ("Backup" and "backup", composed and
    decomposed Hangul): each would be a different key, but people could not tell the jobs apart."""
    groups: dict[str, list[str]] = {}
    for name in names:
        if isinstance(name, str):
            groups.setdefault(fold_name(name), []).append(name)
    problems = []
    for same in groups.values():
        if len(same) < 2:
            continue
        field = _("field '%(field)s'", field="name")
        if what == "job":
            where = _("job %(name)s: %(where)s", name=repr(same[0]), where=field)
            duplicate = _("duplicate job name (used %(count)d times)", count=len(same))
        else:
            where = _("watch %(name)s: %(where)s", name=repr(same[0]), where=field)
            duplicate = _("duplicate watch name (used %(count)d times)", count=len(same))
        if len(set(same)) == 1:
            problems.append(where + ": " + duplicate)
        else:
            shown = ", ".join(repr(n) for n in dict.fromkeys(same))
            problems.append(where + ": " + _("names %(names)s differ only by case or Unicode normalisation; "
                                             "give each a distinct name", names=shown))
    return sorted(problems)


def _validate_list(raw: dict[str, Any], section: str, model: type[M], problems: list[str],
                   collect: Callable[[ValidationError, tuple[int | str, ...]], None]) -> tuple[list[Any], list[M]]:
    """Validate each entry of a list section on its own, so one bad entry hides no other's problems."""
    items = raw.get(section) or []
    if not isinstance(items, list):
        problems.append(f"field {section!r}: expected a list of {'jobs' if section == 'jobs' else 'watches'}")
        return [], []
    out: list[M] = []
    for index, item in enumerate(items):
        try:
            out.append(model.model_validate(item))
        except ValidationError as exc:
            collect(exc, (section, index))
    return items, out


def _watch_problems(raw_watches: list[Any], raw_jobs: list[Any]) -> list[str]:
    problems: list[str] = []
    names = [w.get("name") for w in raw_watches if isinstance(w, dict)]
    problems.extend(_duplicate_names("watch", names))
    known = {normalise_name(n) for n in names if isinstance(n, str)}
    for job in raw_jobs:
        if not isinstance(job, dict):
            continue
        batch = job.get("on_batch")
        for field, watch in (("on_file", job.get("on_file")),
                             ("on_batch.watch", batch.get("watch") if isinstance(batch, dict) else None)):
            if isinstance(watch, str) and normalise_name(watch) not in known:
                where = _("job %(name)s: %(where)s", name=repr(job.get("name")),
                          where=_("field '%(field)s'", field=field))
                problems.append(where + ": " + _("unknown watch %(watch)s; known: %(known)s", watch=repr(watch),
                                                 known=", ".join(sorted(known))
                                                 or _("none (add it under folder_watches)")))
    problems.extend(_expect_problems(raw_watches, raw_jobs))
    return problems


def _expect_problems(raw_watches: list[Any], raw_jobs: list[Any]) -> list[str]:
    """A watch's flights are the batches of its `on_batch` jobs: counting them, or their files,
    on a watch no job batches could never be satisfied."""
    batched = {normalise_name(b["watch"]) for j in raw_jobs if isinstance(j, dict)
               and isinstance(b := j.get("on_batch"), dict) and isinstance(b.get("watch"), str)}
    problems = []
    for watch in raw_watches:
        expect = watch.get("expect") if isinstance(watch, dict) else None
        name = watch.get("name") if isinstance(watch, dict) else None
        if not isinstance(expect, dict) or not isinstance(name, str) or normalise_name(name) in batched:
            continue
        unmeetable = [f for f, ok in (("min_files", expect.get("min_files") is None),
                                      ("flights_per_day", expect.get("flights_per_day", 1) == 1)) if not ok]
        for field in unmeetable:
            problems.append(_("watch %(name)s: field 'expect.%(field)s': needs a job with on_batch on this "
                              "watch (its flights are that job's batches); without one, expect only 'by'",
                              name=repr(name), field=field))
    return problems


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError([f"{path}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                           f"{exc.start}); save the file as UTF-8"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from None
    return parse_config(raw, path.parent)


def resolve_system(system: SystemConfig, base_dir: Path) -> SystemConfig:
    """The system section as applied: cleanup roots absolute (relative ones: to the config file)."""
    return system.model_copy(update={"cleanup_roots": [absolute(r, base_dir) for r in system.cleanup_roots]})


def _resolve_builtin(job: JobConfig, base_dir: Path) -> JobConfig:
    """A chore's folders absolute (relative: to the config file's directory, like watch roots)."""
    chore = job.builtin
    if chore is None:
        return job
    if chore.chore == "digest":
        chore = chore.model_copy(update={"disks": [absolute(d, base_dir) for d in chore.disks]})
    else:
        chore = chore.model_copy(update={"folder": absolute(chore.folder, base_dir)})
    return job.model_copy(update={"builtin": chore})


def to_specs(
    config: Config, base_dir: Path, previous: dict[str, JobSpec], now: datetime | None = None
) -> dict[str, JobSpec]:
    """Resolve defaults into specs. A job keeps its `defined_at` while its schedule is unchanged,
    so re-applying the same file never triggers a catch-up of instants before it existed."""
    now = now or datetime.now(UTC)
    specs: dict[str, JobSpec] = {}
    for job in config.jobs:
        cwd = Path(job.cwd) if job.cwd else base_dir
        if not cwd.is_absolute():
            cwd = base_dir / cwd
        spec = JobSpec(
            job=_resolve_builtin(job, base_dir),
            timezone=job.timezone or config.system.timezone,
            cwd=str(cwd.resolve()),
            defined_at=now,
            # only sun jobs carry it: moving the farm's pin resets no other job's defined_at
            location=config.system.location if job.sun is not None else None,
        )
        old = previous.get(job.name)
        if old is not None and old.same_schedule(spec):
            spec = spec.model_copy(update={"defined_at": old.defined_at})
        specs[job.name] = spec
    return specs


def resolve_watches(config: Config, base_dir: Path) -> list[WatchConfig]:
    """Watches as applied: a relative root is taken relative to the config file's directory.
    The root is made absolute but not resolved (a root that is a symlink, or not mounted yet,
    is followed at watch time, not frozen now)."""
    out = []
    for watch in config.folder_watches:
        root = Path(watch.path).expanduser()
        if not root.is_absolute():
            root = base_dir / root
        out.append(watch.model_copy(update={"path": os.path.normpath(root)}))
    return out
