-- formerly: audit_outbox.user/002_study_consents_audit
-- Study consents are audited like users: every consent given, renewed or withdrawn adds its
-- event to the outbox in the same transaction (audit_capture; user_service/consent_routes.py
-- writes through shared.writes.begin_write). entityId is "{userName}/{studyId}";
-- audit_study_consent_api shapes a captured row as the API shows a consent
-- (user_service/models.py Consent).
CREATE FUNCTION audit_study_consent_api(r jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN r IS NOT NULL THEN jsonb_build_object(
        'userName', r -> 'user_name', 'studyId', r -> 'study_id',
        'status', CASE WHEN jsonb_typeof(r -> 'withdrawn_at') = 'null' THEN 'consented'
                       ELSE 'withdrawn' END,
        'consentedAt', audit_rfc3339((r ->> 'consented_at')::timestamptz),
        'withdrawnAt', audit_rfc3339((r ->> 'withdrawn_at')::timestamptz),
        'version', r -> 'version') END
$$;

INSERT INTO audit_entity_types (entity_type, api_function, fields) VALUES (
    'study_consent', 'audit_study_consent_api',
    ARRAY['userName', 'studyId', 'status', 'consentedAt', 'withdrawnAt']);

CREATE TRIGGER study_consents_audit AFTER INSERT OR UPDATE ON study_consents
    FOR EACH ROW EXECUTE FUNCTION audit_capture('study_consent', 'user_name', 'study_id');
