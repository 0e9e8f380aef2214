-- Users of one shard. userName is the shard key and the primary key.
CREATE TABLE users (
    user_name   text PRIMARY KEY,
    role        text NOT NULL,
    given_name  text NOT NULL,
    family_name text NOT NULL,
    birth_date  date NOT NULL,
    sex         text NOT NULL DEFAULT 'unknown',
    email       text,
    phone       text,
    address     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version     integer NOT NULL DEFAULT 1
);

-- Case-insensitive prefix search on familyName, merged in (familyName, givenName, userName)
-- order across shards: byte order ("C") so that every shard and the gateway sort alike.
CREATE INDEX users_family_prefix ON users (lower(family_name) text_pattern_ops);
CREATE INDEX users_search_order ON users (family_name COLLATE "C", given_name COLLATE "C", user_name COLLATE "C");
