-- A move's copy keeps the bucket its source computed (resharder/move.py).
--
-- The bucket triggers fired for every row replication applied (ENABLE ALWAYS), so the
-- target of a move ran a PL/pgSQL call and a SHA-256 for each copied row, only to find the
-- bucket the row arrived with: the source's own trigger had computed it when the row was
-- written. That was the largest part of what the target does per row in a move's initial
-- COPY beyond a plain COPY of the same rows. Now, under session_replication_role = replica
-- (replication apply, a bulk load), the trigger computes the bucket only where it is
-- missing or could be wrong: a row inserted without one, an update that changes the
-- userName or the bucket. Every write of the application (the origin role, whatever the
-- caller sends) still has its bucket computed by the database.
DROP TRIGGER users_bucket ON users;
CREATE TRIGGER users_bucket BEFORE INSERT ON users FOR EACH ROW
    WHEN (NEW.bucket IS NULL OR current_setting('session_replication_role') <> 'replica')
    EXECUTE FUNCTION medsvc_set_bucket();
ALTER TABLE users ENABLE ALWAYS TRIGGER users_bucket;
CREATE TRIGGER users_bucket_update BEFORE UPDATE ON users FOR EACH ROW
    WHEN (NEW.user_name IS DISTINCT FROM OLD.user_name OR NEW.bucket IS DISTINCT FROM OLD.bucket
          OR current_setting('session_replication_role') <> 'replica')
    EXECUTE FUNCTION medsvc_set_bucket();
ALTER TABLE users ENABLE ALWAYS TRIGGER users_bucket_update;

DROP TRIGGER study_consents_bucket ON study_consents;
CREATE TRIGGER study_consents_bucket BEFORE INSERT ON study_consents FOR EACH ROW
    WHEN (NEW.bucket IS NULL OR current_setting('session_replication_role') <> 'replica')
    EXECUTE FUNCTION medsvc_set_bucket();
ALTER TABLE study_consents ENABLE ALWAYS TRIGGER study_consents_bucket;
CREATE TRIGGER study_consents_bucket_update BEFORE UPDATE ON study_consents FOR EACH ROW
    WHEN (NEW.user_name IS DISTINCT FROM OLD.user_name OR NEW.bucket IS DISTINCT FROM OLD.bucket
          OR current_setting('session_replication_role') <> 'replica')
    EXECUTE FUNCTION medsvc_set_bucket();
ALTER TABLE study_consents ENABLE ALWAYS TRIGGER study_consents_bucket_update;
