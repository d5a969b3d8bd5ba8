"""The environment a `run:` job gets: what a program needs to run, and nothing of cropcron's own
configuration or secrets. A job used to inherit the runner's whole environment, and under
`cropcron up` that held the broker's and the database's credentials, the dashboard token, the
Slack webhook and SMTP passwords. Now it gets:

- a few basics from the runner's environment (PATH, HOME, LANG, LC_*, TZ, ...);
- the variables its `pass_env:` names (explicitly, from the runner's environment);
- its `env:`; the run's CROPCRON_RUN_ID, _JOB, _ATTEMPT, _SCHEDULED_AT (and the file/batch ones);
- broker credentials only when it names the user it runs as (`nats_user: uploader|observer`):
  NATS_URL, CROPCRON_NATS_USER and CROPCRON_NATS_PASSWORD_FILE, which `cropcron publish-file`
  and any nats client the job writes can use.
"""

from __future__ import annotations

import os
from pathlib import Path

from shared.config import JobConfig
from shared.nats_auth import password_file

BASICS = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "SHELL", "TMPDIR", "TEMP", "TMP",
                    "TERM", "PYTHONPATH", "VIRTUAL_ENV", "CROPCRON_DATA_DIR"})


def job_users_dir(environ: dict[str, str]) -> Path | None:
    """Where the runner finds the passwords of the users jobs may run as: a directory of
    <user>.password files (compose mounts the `uploader`/`observer` secrets there; `up` keeps
    them with the services' own)."""
    directory = environ.get("CROPCRON_NATS_JOB_USERS_DIR") or environ.get("CROPCRON_NATS_CREDENTIALS_DIR")
    return Path(directory) if directory else None


def job_environ(job: JobConfig, nats_url: str, run_vars: dict[str, str],
                environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = dict(os.environ) if environ is None else environ
    env = {k: v for k, v in environ.items() if k in BASICS or k.startswith("LC_")}
    env.update({k: environ[k] for k in job.pass_env if k in environ})
    env.update(job.env)
    if job.nats_user is not None:
        env["NATS_URL"] = nats_url
        env["CROPCRON_NATS_USER"] = job.nats_user
        directory = job_users_dir(environ)
        if directory is not None:
            env["CROPCRON_NATS_PASSWORD_FILE"] = str(password_file(directory, job.nats_user))
    env.update(run_vars)
    return env
