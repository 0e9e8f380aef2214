-- The first answer to each POST that carried an Idempotency-Key (API.md, Conventions), kept
-- 24 hours so that a retry gets that answer again instead of writing twice. A row is written
-- in the same transaction as the write it answers for (shared/idempotency.py): it exists
-- exactly when that write committed.
CREATE TABLE idempotency_keys (
    caller      text NOT NULL,          -- the token's sub: keys of different callers never meet
    path        text NOT NULL,
    key         text NOT NULL,
    fingerprint bytea NOT NULL,         -- SHA-256 of the request body
    status      smallint NOT NULL,
    headers     text[] NOT NULL,        -- name, value, name, value ... of the kept headers
    body        bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, path, key)
);
-- purge_expired walks the oldest rows first.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
