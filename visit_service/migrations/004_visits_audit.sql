-- formerly: audit_outbox.visit/001_visits_audit
-- Every insert and update of a visit adds its audit event to the outbox, in the same
-- transaction (audit_capture); entityId is "{userName}/{visitId}". audit_visit_api shapes a
-- captured row as the API shows a visit (visit_service/models.py Visit) when the relay
-- ships it.
CREATE FUNCTION audit_visit_api(r jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN r IS NOT NULL THEN jsonb_build_object(
        'visitId', r -> 'visit_id', 'userName', r -> 'user_name', 'clinician', r -> 'clinician',
        'type', r -> 'type', 'startedAt', audit_rfc3339((r ->> 'started_at')::timestamptz),
        'endedAt', audit_rfc3339((r ->> 'ended_at')::timestamptz), 'reason', r -> 'reason',
        'diagnoses', r -> 'diagnoses', 'vitals', r -> 'vitals',
        'medications', r -> 'medications', 'notes', r -> 'notes',
        'createdAt', audit_rfc3339((r ->> 'created_at')::timestamptz),
        'updatedAt', audit_rfc3339((r ->> 'updated_at')::timestamptz),
        'version', r -> 'version') END
$$;

INSERT INTO audit_entity_types (entity_type, api_function, fields) VALUES (
    'visit', 'audit_visit_api',
    ARRAY['visitId', 'userName', 'clinician', 'type', 'startedAt', 'endedAt', 'reason',
          'diagnoses', 'vitals', 'medications', 'notes']);

CREATE TRIGGER visits_audit AFTER INSERT OR UPDATE ON visits
    FOR EACH ROW EXECUTE FUNCTION audit_capture('visit', 'user_name', 'visit_id');
