-- Every alert raised (issue 4), keyed by its id: a redelivered alert is stored once.
CREATE TABLE IF NOT EXISTS alerts (
    id          text PRIMARY KEY,
    level       text NOT NULL,
    level_rank  smallint NOT NULL,
    kind        text NOT NULL,
    summary     text NOT NULL,
    text        text NOT NULL DEFAULT '',
    job         text,
    job_type    text,
    run_id      text,
    source      text NOT NULL,
    at          timestamptz NOT NULL,
    resolved    boolean NOT NULL DEFAULT false,
    fingerprint text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS alerts_at ON alerts (at DESC);
CREATE INDEX IF NOT EXISTS alerts_job_at ON alerts (job, at DESC);

-- Every delivery attempt of every notification: sent, retry, failed, escalated.
CREATE TABLE IF NOT EXISTS alert_deliveries (
    notification_id text NOT NULL,
    attempt     integer NOT NULL,
    outcome     text NOT NULL,
    channel     text NOT NULL,
    status      text NOT NULL,
    alert_ids   text[] NOT NULL,
    error       text,
    message_id  text,
    at          timestamptz NOT NULL,
    PRIMARY KEY (notification_id, attempt, outcome)
);
CREATE INDEX IF NOT EXISTS alert_deliveries_alerts ON alert_deliveries USING gin (alert_ids);
CREATE INDEX IF NOT EXISTS alert_deliveries_at ON alert_deliveries (at DESC);
