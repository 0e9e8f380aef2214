"""The anonymizer's settings: the common ones, its database, the pseudonym master key."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from shared.dbsetup import dsn_with
from shared.settings import CommonSettings

LOCAL_PSEUDONYM_KEY = "local-dev-pseudonym-key"
DEFAULT_DATABASE = "anonymizer"


class AnonymizerSettings(CommonSettings):
    """An anonymizer process (API, scheduler or one-off run)."""

    # DSN of the study registry (studies, runs, records) as its owner. When unset, the
    # database "anonymizer" on the central server (MEDSVC_CENTRAL_DSN).
    anonymizer_dsn: str = ""
    central_dsn: str = ""
    # Create the database named in anonymizer_dsn when it does not exist (local stack, tests).
    anonymizer_create_database: bool = True
    # The master key every study's pseudonym key is derived from (HMAC-SHA-256).
    pseudonym_key: SecretStr = SecretStr(LOCAL_PSEUDONYM_KEY)
    # Rows fetched from a shard per round trip during a run.
    anonymizer_batch_rows: int = Field(default=2000, ge=1)
    # The read-only role the anonymizer reads the shards as, and its password (production:
    # anonymizer_reader, deploy/k8s). Unset: the shard map DSN's user with MEDSVC_PG_PASSWORD.
    anonymizer_shard_user: str | None = None
    anonymizer_shard_password: SecretStr | None = None
    # Connections per shard pool (a run uses one per shard; GET study counts use one).
    anonymizer_shard_pool_max: int = Field(default=4, ge=1)
    # Seconds between the scheduler's looks at the studies' cron schedules.
    anonymizer_schedule_interval: float = Field(default=5.0, gt=0)
    # Seconds between refreshes of the per-study "last successful run" gauge.
    anonymizer_metrics_interval: float = Field(default=15.0, gt=0)
    # Requests in flight past which more are shed at once with 503 (shared/admission.py); a
    # records download holds its place until its last byte is sent.
    max_in_flight: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _check(self) -> AnonymizerSettings:
        if not self.anonymizer_dsn and self.central_dsn:
            self.anonymizer_dsn = dsn_with(self.central_dsn, database=DEFAULT_DATABASE)
        if not self.anonymizer_dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "MEDSVC_ANONYMIZER_DSN (or MEDSVC_CENTRAL_DSN) must be a postgresql:// DSN"
            )
        key = self.pseudonym_key.get_secret_value()
        if self.env == "production" and (key == LOCAL_PSEUDONYM_KEY or len(key) < 32):
            raise ValueError(
                "MEDSVC_PSEUDONYM_KEY must be set (at least 32 bytes, not the local default) "
                "in production"
            )
        return self

    @property
    def master_key(self) -> bytes:
        return self.pseudonym_key.get_secret_value().encode()
