-- formerly: audit_outbox.user/001_users_audit
-- Every insert and update of a user adds its audit event to the outbox, in the same
-- transaction (audit_capture). audit_user_api shapes a captured row as the API shows a user
-- (user_service/models.py User) when the relay ships it.
CREATE FUNCTION audit_user_api(r jsonb) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN r IS NOT NULL THEN jsonb_build_object(
        'userName', r -> 'user_name', 'role', r -> 'role', 'givenName', r -> 'given_name',
        'familyName', r -> 'family_name', 'birthDate', r -> 'birth_date', 'sex', r -> 'sex',
        'email', r -> 'email', 'phone', r -> 'phone', 'address', r -> 'address',
        'createdAt', audit_rfc3339((r ->> 'created_at')::timestamptz),
        'updatedAt', audit_rfc3339((r ->> 'updated_at')::timestamptz),
        'version', r -> 'version') END
$$;

INSERT INTO audit_entity_types (entity_type, api_function, fields) VALUES (
    'user', 'audit_user_api',
    ARRAY['userName', 'role', 'givenName', 'familyName', 'birthDate', 'sex', 'email', 'phone',
          'address']);

CREATE TRIGGER users_audit AFTER INSERT OR UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION audit_capture('user', 'user_name');
