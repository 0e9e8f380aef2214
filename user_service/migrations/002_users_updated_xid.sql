-- The anonymizer's watermark (anonymizer/shards.py): every row records the id of the
-- transaction that last wrote it. A run reads the rows whose writer is visible in its
-- snapshot and was not in the previous run's; unlike a timestamp, that is exact when writes
-- commit while a run is reading. Existing rows get this migration's transaction id.
CREATE FUNCTION medsvc_set_updated_xid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

ALTER TABLE users ADD COLUMN updated_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE TRIGGER users_updated_xid BEFORE INSERT OR UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION medsvc_set_updated_xid();
