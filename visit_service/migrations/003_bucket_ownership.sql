-- Bucket ownership for visits (user_service/migrations/004_bucket_ownership.sql defines the
-- functions): the bucket column, the replica identity a move's row filter needs, the check of
-- every write, and the watermark also for replicated rows.
ALTER TABLE visits ADD COLUMN bucket int NOT NULL GENERATED ALWAYS AS (medsvc_bucket(user_name)) STORED;
ALTER TABLE visits ALTER COLUMN bucket DROP EXPRESSION;
CREATE TRIGGER visits_bucket BEFORE INSERT OR UPDATE ON visits
    FOR EACH ROW EXECUTE FUNCTION medsvc_set_bucket();
ALTER TABLE visits ENABLE ALWAYS TRIGGER visits_bucket;
CREATE UNIQUE INDEX visits_identity ON visits (visit_id, bucket);
ALTER TABLE visits REPLICA IDENTITY USING INDEX visits_identity;
CREATE INDEX visits_bucket ON visits (bucket);
CREATE TRIGGER visits_owner BEFORE INSERT OR UPDATE ON visits
    FOR EACH ROW EXECUTE FUNCTION medsvc_check_owner();
ALTER TABLE visits ENABLE ALWAYS TRIGGER visits_updated_xid;
