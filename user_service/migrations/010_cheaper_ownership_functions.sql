-- The ownership functions of 004 and 008, the same values for less of the server's time
-- (issue 16: pg_stat_statements and track_functions on a POST visit, bench/pgstat.py, put
-- ~180 µs of each write's and each uncached read's PostgreSQL time in medsvc_owner, ~40 µs
-- per call in medsvc_bucket, ~20 µs per call in medsvc_shard_id).
--
-- Why they cost that much: a SQL function that PostgreSQL cannot inline into its caller is
-- parsed and planned again in every statement that calls it (PL/pgSQL keeps its plans for
-- the session). medsvc_bucket was not inlined because it is IMMUTABLE and its body called
-- convert_to, which is only STABLE; medsvc_owner and medsvc_shard_id read tables, which no
-- scalar SQL function may do and still be inlined.

-- The bucket, as before (shared/shardmap.py bucket_of; tests/e2e/test_resharding.py checks
-- them against each other): SHA-256 of the name's UTF-8 bytes. In this UTF-8 database a
-- text's bytes are its UTF-8 encoding; decode(..., 'escape') gives them as bytea once every
-- backslash is doubled (escape format reads "\\" as one backslash and every other byte as
-- itself), and, unlike convert_to, decode and replace are IMMUTABLE: the body now inlines
-- into every caller (a plain expression, no function call).
CREATE OR REPLACE FUNCTION medsvc_bucket(u text) RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (('x' || left(encode(sha256(decode(replace(u, '\', '\\'), 'escape')), 'hex'), 16))::bit(64)::bigint
            & 1023)::int
$$;

-- The owner of a userName's bucket as this database knows it (NULL before seeding): PL/pgSQL,
-- so that its one query is planned once per session. STABLE as before: it reads in the
-- calling statement's snapshot (an owned read's owner and row come from one snapshot).
CREATE OR REPLACE FUNCTION medsvc_owner(u text) RETURNS int LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT owner FROM shard_buckets WHERE bucket = medsvc_bucket(u));
END $$;

-- Which shard this database is (the written_on default and medsvc_stamp_write): PL/pgSQL
-- for the same reason.
CREATE OR REPLACE FUNCTION medsvc_shard_id() RETURNS int LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT shard_id FROM shard_identity);
END $$;
