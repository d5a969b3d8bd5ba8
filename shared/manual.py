"""A manual run ("run now"), the same for the CLI, the dashboard and any other caller: the trigger,
its subject, and the jobs that cannot run without an input."""

from __future__ import annotations

from shared import wire
from shared.config import JobSpec
from shared.events import Trigger, manual_run_id, utcnow


class CannotRunNow(ValueError):
    """The job needs an input a manual run cannot give it (a file, a flight batch)."""


def manual_trigger(spec: JobSpec, requested_by: str) -> tuple[str, Trigger]:
    """(subject, trigger) of a manual run; raises CannotRunNow for a job that runs on files, whose
    run: placeholders ({file.path}, {batch.manifest}) a manual trigger cannot fill (it used to be
    accepted and the run died on them)."""
    job = spec.job
    if job.on_file:
        raise CannotRunNow(f"job {job.name!r} runs once per arrived file of watch {job.on_file!r} and has no "
                           f"file to run on; announce one with `cropcron publish-file {job.on_file} -- PATH`")
    if job.on_batch:
        raise CannotRunNow(f"job {job.name!r} runs once per flight batch of watch {job.on_batch.watch!r}; "
                           f"announce the flight's files with `cropcron publish-file {job.on_batch.watch} -- PATH...` "
                           "and the batch runs when it closes")
    trigger = Trigger(run_id=manual_run_id(), job=job.name, kind="manual", created_at=utcnow(),
                      requested_by=requested_by)
    return wire.trigger_subject(wire.band_for_priority(job.priority), job.name), trigger
