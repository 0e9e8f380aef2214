-- The audit store: one row per event, each chained to the one before by its hash
-- (audit_service/chain.py defines the canonical body and the hash). Append-only.
CREATE TABLE audit_events (
    seq          bigint PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    entity_type  text NOT NULL,
    entity_id    text NOT NULL,
    -- The userName a user or visit event is about (NULL for other entity types).
    subject      text,
    actor        text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    -- The canonical JSON of the event without hash/prevHash: exactly the bytes hashed.
    body         text NOT NULL,
    prev_hash    text NOT NULL,
    hash         text NOT NULL
);

-- The filters of GET /v1/audit/events, each in seq order.
CREATE INDEX audit_events_entity ON audit_events (entity_type, entity_id, seq);
CREATE INDEX audit_events_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_subject ON audit_events (subject, seq) WHERE subject IS NOT NULL;
CREATE INDEX audit_events_occurred ON audit_events (occurred_at);

-- The single chain head. Appending locks this row (SELECT ... FOR UPDATE), so however many
-- audit_service processes run, seq and prevHash are handed out one transaction at a time
-- and the chain never forks.
CREATE TABLE audit_chain_head (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    last_seq  bigint NOT NULL,
    last_hash text NOT NULL
);
INSERT INTO audit_chain_head (id, last_seq, last_hash) VALUES (true, 0, repeat('0', 64));

-- userNames whose user_service create event says role "patient" (a role never changes):
-- clinicians may read the events about these users and their visits.
CREATE TABLE audit_patients (
    user_name text PRIMARY KEY
);

-- Append-only, even for a role that was granted more than it should have been.
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

-- The head only moves forward, and only to an event that is stored with that hash.
CREATE FUNCTION audit_chain_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.last_seq < OLD.last_seq OR NOT EXISTS (
        SELECT 1 FROM audit_events WHERE seq = NEW.last_seq AND hash = NEW.last_hash
    ) THEN
        RAISE EXCEPTION 'the audit chain head may only move forward to a stored event'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE ON audit_chain_head
    FOR EACH ROW EXECUTE FUNCTION audit_chain_head_forward();
CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE OR TRUNCATE ON audit_chain_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();

-- The service's login role: it may read and append, nothing else.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_writer') THEN
        CREATE ROLE audit_writer LOGIN;
    END IF;
END $$;
REVOKE ALL ON audit_events, audit_chain_head, audit_patients FROM PUBLIC;
GRANT SELECT, INSERT ON audit_events TO audit_writer;
GRANT SELECT, UPDATE ON audit_chain_head TO audit_writer;
GRANT SELECT, INSERT ON audit_patients TO audit_writer;
