-- Visits of one shard's patients; they live on their patient's shard.
CREATE TABLE visits (
    visit_id    uuid PRIMARY KEY,
    user_name   text NOT NULL REFERENCES users (user_name),
    clinician   text NOT NULL,
    type        text NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    reason      text,
    diagnoses   jsonb NOT NULL DEFAULT '[]',
    vitals      jsonb,
    medications jsonb NOT NULL DEFAULT '[]',
    notes       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     integer NOT NULL DEFAULT 1
);

-- A patient's visits, newest startedAt first, keyset-paginated by (started_at, visit_id).
CREATE INDEX visits_by_patient ON visits (user_name, started_at DESC, visit_id DESC);
