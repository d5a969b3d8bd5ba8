-- One row per run, keyed by its deterministic run id; one row per attempt.
CREATE TABLE IF NOT EXISTS runs (
    run_id        text PRIMARY KEY,
    job           text NOT NULL,
    job_type      text,
    trigger_kind  text,
    state         text NOT NULL,
    state_rank    smallint NOT NULL,
    attempt       integer NOT NULL,
    scheduled_at  timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    duration_s    double precision,
    exit_code     integer,
    timed_out     boolean NOT NULL DEFAULT false,
    error         text,
    output_tail   text,
    result        jsonb,
    reason        text,
    next_attempt_at timestamptz,
    runner        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_job_time ON runs (job, (coalesce(scheduled_at, started_at, updated_at)) DESC);
CREATE INDEX IF NOT EXISTS runs_time ON runs ((coalesce(scheduled_at, started_at, updated_at)) DESC);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state);

CREATE TABLE IF NOT EXISTS run_attempts (
    run_id       text NOT NULL,
    attempt      integer NOT NULL,
    state        text NOT NULL,
    state_rank   smallint NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    duration_s   double precision,
    exit_code    integer,
    timed_out    boolean NOT NULL DEFAULT false,
    error        text,
    output_tail  text,
    runner       text,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (run_id, attempt)
);

-- Input that was refused (malformed triggers, unknown jobs): kept, never silently lost.
CREATE TABLE IF NOT EXISTS rejections (
    id          bigserial PRIMARY KEY,
    source      text NOT NULL,
    subject     text NOT NULL,
    reason      text NOT NULL,
    payload_excerpt text,
    at          timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS rejections_at ON rejections (at DESC);
