-- The audit outbox of one shard. Each audited write adds its event here in its own
-- transaction (so an event exists exactly when its change committed); the relay in the FE
-- servers (fe_server/outbox.py) ships the rows to audit_service and deletes what was stored.
--
-- The write path pays for as little as possible: the capture trigger stores the raw rows
-- (to_jsonb of OLD and NEW). Shaping them as the API shows the entity, and working out which
-- fields changed, happens when the relay reads the rows, off the request's path.
CREATE TABLE audit_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid NOT NULL DEFAULT gen_random_uuid(),
    entity_type text NOT NULL,
    entity_id   text NOT NULL,
    action      text NOT NULL,
    actor       text NOT NULL,
    source      text NOT NULL,
    request_id  text,
    -- clock_timestamp(): the moment of the change, taken while the row lock is held, so the
    -- events of one entity have increasing times (now() is the transaction's start).
    occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    row_before  jsonb,
    row_after   jsonb
);

-- What the relay needs per audited entity type: the function turning a raw row (jsonb) into
-- the entity as the API shows it, and the API fields "changes" may name, in API order.
CREATE TABLE audit_entity_types (
    entity_type  text PRIMARY KEY,
    api_function regproc NOT NULL,
    fields       text[] NOT NULL
);

-- A timestamp as the API writes it (orjson's RFC 3339): UTC, "Z", microseconds only when
-- non-zero, e.g. 2026-11-20T09:00:00Z or 2026-11-20T09:00:00.123456Z. NULL stays NULL.
-- (Not STRICT, so that the planner can inline it.)
CREATE FUNCTION audit_rfc3339(ts timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN extract(microseconds FROM ts) % 1000000 = 0
                THEN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
                ELSE to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END
$$;

-- The fields of p_fields whose values differ between p_before and p_after; on a create
-- (p_before NULL), those that are set.
CREATE FUNCTION audit_changes(p_before jsonb, p_after jsonb, p_fields text[]) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(f ORDER BY i), '{}')
    FROM unnest(p_fields) WITH ORDINALITY AS t(f, i)
    WHERE CASE WHEN p_before IS NULL THEN coalesce(jsonb_typeof(p_after -> f), 'null') <> 'null'
               ELSE (p_before -> f) IS DISTINCT FROM (p_after -> f) END
$$;

-- The capture trigger: AFTER INSERT OR UPDATE ... FOR EACH ROW EXECUTE FUNCTION
-- audit_capture('<entity type>', '<id column>' [, '<second id column>']); a two-column id is
-- joined with "/" (a visit is "{userName}/{visitId}"). The actor, source and request id are
-- the transaction-local settings shared.writes.begin_write makes; a write without an actor is
-- refused, so none escapes the audit trail.
CREATE FUNCTION audit_capture() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_actor text := current_setting('medsvc.actor', true);
    v_after jsonb := to_jsonb(NEW);
    v_id    text := v_after ->> TG_ARGV[1];
BEGIN
    IF v_actor IS NULL OR v_actor = '' THEN
        RAISE EXCEPTION 'audited write to % without an actor (start the transaction with shared.writes.begin_write, or set medsvc.actor)', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_NARGS > 2 THEN
        v_id := v_id || '/' || (v_after ->> TG_ARGV[2]);
    END IF;
    INSERT INTO audit_outbox (entity_type, entity_id, action, actor, source, request_id,
                              row_before, row_after)
    VALUES (TG_ARGV[0], v_id, CASE WHEN TG_OP = 'INSERT' THEN 'create' ELSE 'update' END,
            v_actor, coalesce(nullif(current_setting('medsvc.source', true), ''), 'unknown'),
            nullif(current_setting('medsvc.request_id', true), ''),
            CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END, v_after);
    RETURN NULL;
END $$;
