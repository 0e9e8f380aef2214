"""audit_service's settings: the common ones plus its own database (``MEDSVC_AUDIT_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from shared.dbsetup import dsn_with
from shared.settings import CommonSettings

# The role the service's pool logs in as: SELECT and INSERT on events, never UPDATE or
# DELETE (migrations/001_events.sql creates it and grants exactly that).
WRITER_ROLE = "audit_writer"


class AuditSettings(CommonSettings):
    """An audit_service process."""

    # DSN of the audit database as its owner: used to create the database if missing and to
    # apply the migrations. Requests are served by a pool logged in as WRITER_ROLE. When
    # unset, the database "audit" on the central server (MEDSVC_CENTRAL_DSN).
    audit_dsn: str = ""
    central_dsn: str = ""
    # Password of WRITER_ROLE (none for trust authentication, as in the local stack).
    audit_writer_password: SecretStr | None = None
    # Create the database named in audit_dsn when it does not exist (local stack, tests).
    audit_create_database: bool = True
    # Largest internal ingest body (a relay batch), bytes.
    audit_max_batch_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    # Signed checkpoints (audit_service/checkpoints.py). The Ed25519 private key, PEM (PKCS#8):
    # a Secret file the audit database never sees. Unset: no checkpoints are made.
    audit_signing_key_file: Path | None = None
    # Older public keys (PEM, several per file allowed) whose checkpoints stay verifiable after
    # a key rotation; the current key's public half is always in the keyring.
    audit_public_keys_file: Path | None = None
    # The append-only checkpoint log, outside the audit database (a file every audit_service
    # process of the deployment shares; writers take its flock). Unset: no checkpoints.
    audit_checkpoint_log: Path | None = None
    # How often to sign a checkpoint while events arrive (the API promises at most 10 s).
    audit_checkpoint_interval: float = Field(default=5.0, gt=0, le=10)
    # Requests in flight past which more are shed at once with 503 (shared/admission.py): a
    # relay backs off and sends the batch again; a reader is told Retry-After. Appends wait
    # for the chain head one at a time and queue for the pool's connections: the bound keeps
    # that queue finite, not short.
    max_in_flight: int = Field(default=128, ge=1)

    @model_validator(mode="after")
    def _dsn_required(self) -> AuditSettings:
        if not self.audit_dsn and self.central_dsn:
            self.audit_dsn = dsn_with(self.central_dsn, database="audit")
        if not self.audit_dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("MEDSVC_AUDIT_DSN (or MEDSVC_CENTRAL_DSN) must be a postgresql:// DSN")
        return self

    @property
    def writer_dsn(self) -> str:
        """``audit_dsn`` with the user replaced by :data:`WRITER_ROLE` (and no password)."""
        return dsn_with(self.audit_dsn, user=WRITER_ROLE)
