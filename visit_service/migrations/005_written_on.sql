-- Visits say which shard's database wrote them, as users and consents do
-- (user_service/migrations/008_written_on.sql, which defines medsvc_stamp_write): a visit a
-- move copies keeps its writer's updated_xid and written_on, so that the anonymizer does
-- not take a moved visit for a changed one. The existing rows were all written here; the
-- default, as for users, is this shard.
DO $$
DECLARE
    self text := coalesce((SELECT shard_id::text FROM shard_identity), 'NULL');
BEGIN
    EXECUTE format('ALTER TABLE visits ADD COLUMN written_on int DEFAULT %s', self);
END $$;
ALTER TABLE visits ALTER COLUMN written_on SET DEFAULT medsvc_shard_id();

DROP TRIGGER visits_updated_xid ON visits;
CREATE TRIGGER visits_updated_xid BEFORE INSERT OR UPDATE ON visits
    FOR EACH ROW EXECUTE FUNCTION medsvc_stamp_write();
