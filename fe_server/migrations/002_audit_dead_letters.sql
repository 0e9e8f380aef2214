-- Audit events audit_service refused for good (fe_server/outbox.py, fe_server/dead_letters.py).
-- A refused event is moved here from the outbox, with the reason, after its retries; the
-- relay then skips the later events of the same entity (they wait in the outbox), so that the
-- entity's events still enter the chain in commit order once the cause is fixed and it is
-- replayed. Rows keep their outbox id: a replay puts them back ahead of those later events.
CREATE TABLE audit_dead_letters (
    id          bigint PRIMARY KEY,
    event_id    uuid NOT NULL,
    entity_type text NOT NULL,
    entity_id   text NOT NULL,
    action      text NOT NULL,
    actor       text NOT NULL,
    source      text NOT NULL,
    request_id  text,
    occurred_at timestamptz NOT NULL,
    row_before  jsonb,
    row_after   jsonb,
    reason      text NOT NULL,           -- audit_service's answer
    dead_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    replay      boolean NOT NULL DEFAULT false   -- an operator asked for it back in the outbox
);
CREATE INDEX audit_dead_letters_entity ON audit_dead_letters (entity_type, entity_id);
