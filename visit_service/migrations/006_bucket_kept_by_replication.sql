-- A move's copy keeps the bucket its source computed, as for users and consents
-- (user_service/migrations/009_bucket_kept_by_replication.sql, which says why): under
-- session_replication_role = replica the trigger computes a visit's bucket only where it is
-- missing or could be wrong; every write of the application still has it computed here.
DROP TRIGGER visits_bucket ON visits;
CREATE TRIGGER visits_bucket BEFORE INSERT ON visits FOR EACH ROW
    WHEN (NEW.bucket IS NULL OR current_setting('session_replication_role') <> 'replica')
    EXECUTE FUNCTION medsvc_set_bucket();
ALTER TABLE visits ENABLE ALWAYS TRIGGER visits_bucket;
CREATE TRIGGER visits_bucket_update BEFORE UPDATE ON visits FOR EACH ROW
    WHEN (NEW.user_name IS DISTINCT FROM OLD.user_name OR NEW.bucket IS DISTINCT FROM OLD.bucket
          OR current_setting('session_replication_role') <> 'replica')
    EXECUTE FUNCTION medsvc_set_bucket();
ALTER TABLE visits ENABLE ALWAYS TRIGGER visits_bucket_update;
