-- The anonymizer's watermark, as for users (user_service/migrations/002_users_updated_xid.sql,
-- which defines medsvc_set_updated_xid; visits require the users schema). The index lets an
-- incremental run read only the visits written since its previous snapshot.
ALTER TABLE visits ADD COLUMN updated_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE TRIGGER visits_updated_xid BEFORE INSERT OR UPDATE ON visits
    FOR EACH ROW EXECUTE FUNCTION medsvc_set_updated_xid();
CREATE INDEX visits_updated_xid ON visits (updated_xid);
