-- audit_service serves requests as the append-only role audit_writer (created by its own
-- migrations, which run first); it keeps the answers of keyed POST /v1/audit/events here.
-- Only the audit store's database (the one with audit_events) grants it anything.
DO $$
BEGIN
    IF to_regclass('audit_events') IS NOT NULL
       AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'audit_writer') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO audit_writer;
    END IF;
END $$;
