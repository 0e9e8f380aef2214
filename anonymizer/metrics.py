"""The anonymizer's own metrics: rows extracted, run durations, each study's last success."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROWS_EXTRACTED = Counter(
    "medsvc_anonymizer_rows_extracted_total",
    "Records written by successful runs, by kind (participant, visit, withdrawal)",
    ["kind"],
)
RUN_DURATION = Histogram(
    "medsvc_anonymizer_run_duration_seconds",
    "Wall time of successful runs, from lock to commit",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
RUNS = Counter(
    "medsvc_anonymizer_runs_total", "Runs finished by this process, by outcome", ["outcome"]
)
LAST_SUCCESS = Gauge(
    "medsvc_anonymizer_last_success_timestamp_seconds",
    "Unix time the study's latest successful run finished (any process), by study",
    ["study"],
)
