-- Uploads (issue 14): every announced file, every closed flight batch with its files, and the
-- file a file run was run for.
CREATE TABLE IF NOT EXISTS files (
    id           text PRIMARY KEY,          -- FileEvent.id: one row per file version
    watch        text NOT NULL,
    rel_path     text NOT NULL,             -- display form (U+FFFD for bytes that are not UTF-8)
    size         bigint NOT NULL,
    mtime_ns     bigint NOT NULL,
    detected_at  timestamptz NOT NULL,
    source       text NOT NULL,
    sha256       text
);
CREATE INDEX IF NOT EXISTS files_watch_at ON files (watch, detected_at DESC);
CREATE INDEX IF NOT EXISTS files_at ON files (detected_at DESC);

CREATE TABLE IF NOT EXISTS flights (
    id           text PRIMARY KEY,          -- the batch id, which is also its run's id
    job          text NOT NULL,
    watch        text NOT NULL,
    folder       text NOT NULL,
    partial      boolean NOT NULL,
    reason       text NOT NULL,             -- quiet, manifest, count, max_wait, full
    opened_at    timestamptz NOT NULL,
    closed_at    timestamptz NOT NULL,
    files        integer NOT NULL,
    bytes        bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS flights_watch_closed ON flights (watch, closed_at DESC);
CREATE INDEX IF NOT EXISTS flights_closed ON flights (closed_at DESC);

CREATE TABLE IF NOT EXISTS flight_files (
    flight_id    text NOT NULL,
    position     integer NOT NULL,          -- arrival order within the flight, from 0
    file_id      text NOT NULL,
    rel_path     text NOT NULL,
    size         bigint NOT NULL,
    PRIMARY KEY (flight_id, position)
);
CREATE INDEX IF NOT EXISTS flight_files_file ON flight_files (file_id);

ALTER TABLE runs ADD COLUMN IF NOT EXISTS file_id text;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS file_watch text;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS file_path text;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS file_size bigint;
