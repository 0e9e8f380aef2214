-- A run's records as one NDJSON body, written in bulk (about 1 MiB a chunk) in the run's
-- transaction, with its manifest (hash, size, watermarks, counts, what was left out, the
-- k-anonymity report). Downloads read the chunks in order: byte-identical every time.
-- Runs from before this migration keep their rows in run_records (manifest NULL).
ALTER TABLE runs ADD COLUMN manifest jsonb;

CREATE TABLE run_chunks (
    run_id uuid NOT NULL REFERENCES runs ON DELETE CASCADE,
    seq    integer NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (run_id, seq)
);
-- Compressed with lz4 (fast, in the registry's backend, beside the run's own work): NDJSON
-- shrinks a few times, and writing fewer bytes is what makes storing a large body quick.
ALTER TABLE run_chunks ALTER COLUMN data SET COMPRESSION lz4;

-- The consent version (study_consents.version on the shard) a participant was last extracted
-- under: a different version means the consent was withdrawn and given again between two
-- runs, so the next run emits the withdrawal before anything new. NULL: not yet known.
ALTER TABLE study_participants ADD COLUMN consent_version integer;
