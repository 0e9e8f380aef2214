-- A consent row carries the transaction that last wrote it, as users and visits do
-- (002_users_updated_xid.sql): a bucket move resumed after its flip (resharder/move.py,
-- _verify) tells the rows written on the target since the flip by it. ENABLE ALWAYS: a row
-- copied by logical replication gets the target database's own transaction id.
ALTER TABLE study_consents ADD COLUMN updated_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE TRIGGER study_consents_updated_xid BEFORE INSERT OR UPDATE ON study_consents
    FOR EACH ROW EXECUTE FUNCTION medsvc_set_updated_xid();
ALTER TABLE study_consents ENABLE ALWAYS TRIGGER study_consents_updated_xid;
