-- The anonymizer's watermark across bucket moves (anonymizer/shards.py, resharder/move.py).
--
-- A row's updated_xid is a transaction id of the database that wrote it, and means nothing
-- in another database's id space. Every row now also says which shard's database wrote it
-- (written_on), and a move's logical replication keeps both as written: a row copied from
-- shard A to shard B still says "A, transaction x", which the anonymizer judges against A's
-- watermark of the study's previous run. A moved row is then new to a study only if it
-- changed since that run, not because it moved. (Until now the updated_xid trigger fired
-- also under replication, ENABLE ALWAYS, and gave every copied row B's transaction id.)
--
-- medsvc_stamp_write is the local-write trigger: it fires for the application's writes
-- (session_replication_role origin), not for replication apply (replica), where the row
-- arrives stamped. NULL: written before this database knew its shard (before its FE server
-- first seeded shard_identity); the anonymizer reads it as this database's, and the
-- resharder stamps such rows before it copies them.
CREATE FUNCTION medsvc_shard_id() RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT shard_id FROM shard_identity
$$;
CREATE FUNCTION medsvc_stamp_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_xid := pg_current_xact_id();
    NEW.written_on := medsvc_shard_id();
    RETURN NEW;
END $$;

-- The existing rows were all written here (replication gave copied rows this database's
-- transaction id until now). A constant default fills them without rewriting the table and
-- without firing a trigger (their updated_xid, the watermark, stays as it is). Then the
-- default is this shard, as updated_xid's is this transaction: a bulk load that bypasses the
-- triggers (session_replication_role = replica, bench/move.py) still stamps its rows, while
-- replication apply, which supplies every column, keeps the writer's.
DO $$
DECLARE
    self text := coalesce((SELECT shard_id::text FROM shard_identity), 'NULL');
BEGIN
    EXECUTE format('ALTER TABLE users ADD COLUMN written_on int DEFAULT %s', self);
    EXECUTE format('ALTER TABLE study_consents ADD COLUMN written_on int DEFAULT %s', self);
END $$;
ALTER TABLE users ALTER COLUMN written_on SET DEFAULT medsvc_shard_id();
ALTER TABLE study_consents ALTER COLUMN written_on SET DEFAULT medsvc_shard_id();

DROP TRIGGER users_updated_xid ON users;
CREATE TRIGGER users_updated_xid BEFORE INSERT OR UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION medsvc_stamp_write();
DROP TRIGGER study_consents_updated_xid ON study_consents;
CREATE TRIGGER study_consents_updated_xid BEFORE INSERT OR UPDATE ON study_consents
    FOR EACH ROW EXECUTE FUNCTION medsvc_stamp_write();
