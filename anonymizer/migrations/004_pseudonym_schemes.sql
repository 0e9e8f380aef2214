-- How a study's vids are computed (anonymizer/deidentify.py). A study keeps its scheme for
-- life: its pseudonyms are stable across its runs. The studies registered before this column
-- keep HMAC-SHA-256 vids; every study registered from now on gets AES-MMO vids (the same
-- guarantees, computed in bulk at a fraction of the cost per visit).
ALTER TABLE studies ADD COLUMN pseudonyms text NOT NULL DEFAULT 'hmac-sha256'
    CHECK (pseudonyms IN ('hmac-sha256', 'aes-mmo'));
ALTER TABLE studies ALTER COLUMN pseudonyms SET DEFAULT 'aes-mmo';
