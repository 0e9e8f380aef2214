-- The study registry, the runs and their records. Identities never enter this database:
-- participants are known here by their per-study pseudonym (pid) only.
CREATE TABLE studies (
    study_id   text PRIMARY KEY,
    title      text NOT NULL,
    -- A five-field cron expression (UTC); NULL: manual runs only.
    schedule   text,
    -- The k-anonymity threshold; NULL: report only, generalise nothing.
    k          integer CHECK (k IS NULL OR k >= 2),
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runs (
    run_id         uuid PRIMARY KEY,
    study_id       text NOT NULL REFERENCES studies,
    status         text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    -- What started it: api, schedule or cli; and who (the token's sub, or the process).
    trigger        text NOT NULL,
    requested_by   text NOT NULL,
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at    timestamptz,
    policy_version text NOT NULL,
    counts         jsonb,
    k_anonymity    jsonb,
    error          text,
    -- The registry backend holding the study's run lock: while it lives, the run is running.
    -- A run whose backend is gone (its process died) is failed by whoever looks next.
    owner_pid      integer NOT NULL,
    owner_started  timestamptz NOT NULL
);
-- A study's runs, newest first.
CREATE INDEX runs_by_study ON runs (study_id, started_at DESC, run_id DESC);

-- A run's records, written in the transaction that marks the run succeeded, so that a run
-- that fails or dies midway leaves none behind. kind: 0 withdrawal, 1 participant, 2 visit;
-- served in (kind, pid, vid) order, which says nothing about who anyone is.
CREATE TABLE run_records (
    run_id uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    kind   smallint NOT NULL,
    pid    text NOT NULL,
    vid    text NOT NULL DEFAULT '',
    body   text NOT NULL,
    PRIMARY KEY (run_id, kind, pid, vid)
);

-- Per study and shard, the snapshot (pg_current_snapshot() as text) the last successful run
-- read that shard at: the next run takes the rows whose writing transaction is visible in its
-- own snapshot and not in this one.
CREATE TABLE study_watermarks (
    study_id text NOT NULL REFERENCES studies,
    shard_id integer NOT NULL,
    snapshot text NOT NULL,
    run_id   uuid NOT NULL REFERENCES runs,
    PRIMARY KEY (study_id, shard_id)
);

-- The participants as of the study's last successful run: their de-identified (not yet
-- generalised) participant record and the record as last released (after k-anonymity).
CREATE TABLE study_participants (
    study_id text NOT NULL REFERENCES studies,
    pid      text NOT NULL,
    shard_id integer NOT NULL,
    record   jsonb NOT NULL,
    released jsonb NOT NULL,
    PRIMARY KEY (study_id, pid)
);
