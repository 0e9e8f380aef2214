-- Bucket ownership, enforced by the shard database itself (DESIGN.md "Growth").
--
-- medsvc_bucket is shared/shardmap.py's bucket_of for 1024 buckets: the first 8 bytes of
-- SHA-256(userName) big-endian, mod 1024 (the low 10 bits: the same signed or unsigned).
-- tests/e2e/test_resharding.py checks it against the Python function.
CREATE FUNCTION medsvc_bucket(u text) RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (('x' || left(encode(sha256(convert_to(u, 'UTF8')), 'hex'), 16))::bit(64)::bigint
            & 1023)::int
$$;

-- Every row keyed by a userName carries its bucket: a logical-replication publication can
-- filter on a plain column (not on a function call), and the checks below use its index.
-- It is part of each table's replica identity, which a row filter on UPDATE requires. It is a
-- plain column set by a trigger that fires also under replication (generated columns are not
-- replicated, and the subscriber would miss the identity); the generated expression only
-- fills the existing rows.
-- (Replication apply runs with an empty search_path: the function keeps the migration's.)
CREATE FUNCTION medsvc_set_bucket() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    NEW.bucket := medsvc_bucket(NEW.user_name);
    RETURN NEW;
END $$;
ALTER TABLE users ADD COLUMN bucket int NOT NULL GENERATED ALWAYS AS (medsvc_bucket(user_name)) STORED;
ALTER TABLE users ALTER COLUMN bucket DROP EXPRESSION;
CREATE TRIGGER users_bucket BEFORE INSERT OR UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION medsvc_set_bucket();
ALTER TABLE users ENABLE ALWAYS TRIGGER users_bucket;
ALTER TABLE study_consents ADD COLUMN bucket int NOT NULL GENERATED ALWAYS AS (medsvc_bucket(user_name)) STORED;
ALTER TABLE study_consents ALTER COLUMN bucket DROP EXPRESSION;
CREATE TRIGGER study_consents_bucket BEFORE INSERT OR UPDATE ON study_consents
    FOR EACH ROW EXECUTE FUNCTION medsvc_set_bucket();
ALTER TABLE study_consents ENABLE ALWAYS TRIGGER study_consents_bucket;
CREATE UNIQUE INDEX users_identity ON users (user_name, bucket);
ALTER TABLE users REPLICA IDENTITY USING INDEX users_identity;
CREATE UNIQUE INDEX study_consents_identity ON study_consents (user_name, study_id, bucket);
ALTER TABLE study_consents REPLICA IDENTITY USING INDEX study_consents_identity;
CREATE INDEX users_bucket ON users (bucket);

-- Which shard this database is, and the owner of every bucket as this database knows it.
-- The FE server seeds both from the shard map the first time it starts on the database; from
-- then on only the resharder changes them (resharder/), in the database, during a move.
CREATE TABLE shard_identity (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    shard_id int NOT NULL
);
CREATE TABLE shard_buckets (
    bucket   int PRIMARY KEY CHECK (bucket BETWEEN 0 AND 1023),
    owner    int NOT NULL,
    -- The transaction that last gave this bucket to its owner: the anonymizer treats a
    -- bucket that arrived after its watermark as new on this shard (anonymizer/shards.py).
    since_xid xid8 NOT NULL DEFAULT pg_current_xact_id()
);

-- The owner of a userName's bucket as this database knows it (NULL before seeding).
CREATE FUNCTION medsvc_owner(u text) RETURNS int LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT owner FROM shard_buckets WHERE bucket = medsvc_bucket(u)
$$;

-- Whether this database owns bucket b (a search and the anonymizer see only owned rows).
CREATE FUNCTION medsvc_owns(b int) RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT EXISTS (SELECT 1 FROM shard_buckets sb JOIN shard_identity si ON sb.owner = si.shard_id
                   WHERE sb.bucket = b)
$$;

-- Every write of a row keyed by a userName checks, in its own transaction, that this shard
-- owns the bucket. KEY SHARE: writers do not block each other, but they wait while the
-- resharder holds the bucket FOR UPDATE (the fence), and then see the new owner. A refused
-- write fails with SQLSTATE MS421, which the FE server answers with 421 Misdirected Request.
-- Logical-replication apply runs with session_replication_role = replica, where this (like
-- the audit triggers) does not fire: a move's copy is not a write of the application.
CREATE FUNCTION medsvc_check_owner() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_owner int;
    v_self  int;
BEGIN
    SELECT owner INTO v_owner FROM shard_buckets WHERE bucket = medsvc_bucket(NEW.user_name)
        FOR KEY SHARE;
    SELECT shard_id INTO v_self FROM shard_identity;
    IF v_self IS NOT NULL AND v_owner IS DISTINCT FROM v_self THEN
        RAISE EXCEPTION 'bucket % of this user belongs to shard %', medsvc_bucket(NEW.user_name), v_owner
            USING ERRCODE = 'MS421', DETAIL = coalesce(v_owner::text, '');
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER users_owner BEFORE INSERT OR UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION medsvc_check_owner();
CREATE TRIGGER study_consents_owner BEFORE INSERT OR UPDATE ON study_consents
    FOR EACH ROW EXECUTE FUNCTION medsvc_check_owner();

-- The anonymizer's watermark must be this database's transaction id also for rows a move
-- replicates in (apply runs as replica, where ordinary triggers do not fire).
ALTER TABLE users ENABLE ALWAYS TRIGGER users_updated_xid;

-- A move's fence markers (resharder/): the source inserts one once writes to the moving
-- buckets are fenced; when the target's subscription has applied it, the target has every
-- commit the source made before it (replication applies in commit order).
CREATE TABLE move_markers (
    move_name text NOT NULL,
    nonce     uuid NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (move_name, nonce)
);
