-- The RFC 6962 Merkle tree over the events (audit_service/merkle.py).
-- tree_nodes: the hashes of the perfect subtrees this event's leaf completes, 32 bytes a
-- level, leaf hash first; proofs read them by seq. NULL only for events stored before this
-- migration until audit_service fills them in at start-up (store.backfill_tree).
ALTER TABLE audit_events ADD COLUMN tree_nodes bytea;
-- recorded_at was the database's own insert time: covered by no hash, so a superuser could
-- change it silently. The signed checkpoints (signedAt, kept outside the database) now bound
-- when events were recorded.
ALTER TABLE audit_events DROP COLUMN recorded_at;

-- The tree's compact range (its peaks, largest first) at tree_size events: appending extends
-- it without reading any earlier event.
ALTER TABLE audit_chain_head
    ADD COLUMN tree_size bigint NOT NULL DEFAULT 0,
    ADD COLUMN tree_range bytea NOT NULL DEFAULT ''::bytea;
