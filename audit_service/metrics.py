"""audit_service's own metrics: ingest rate, duplicates, append latency, the chain's length."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_APPENDED = Counter(
    "medsvc_audit_events_appended_total",
    "Events appended to the chain, by path (internal: outbox relays; api: POST /v1/audit/events)",
    ["path"],
)
EVENTS_DUPLICATE = Counter(
    "medsvc_audit_events_duplicate_total",
    "Events received again (known eventId) and not appended, by path",
    ["path"],
)
APPEND_SECONDS = Histogram(
    "medsvc_audit_append_seconds",
    "Time to append one batch (chain-head lock held), by path",
    ["path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CHAIN_LAST_SEQ = Gauge(
    "medsvc_audit_chain_last_seq",
    "The last seq this process appended or saw at the chain head",
)
CHECKPOINT_TREE_SIZE = Gauge(
    "medsvc_audit_checkpoint_tree_size",
    "treeSize of the newest checkpoint this process signed",
)
CHECKPOINT_REFUSED = Counter(
    "medsvc_audit_checkpoint_refused_total",
    "Checkpoints not signed because the database's tree does not extend the last checkpoint "
    "(a rewritten audit log: alert on any)",
)
