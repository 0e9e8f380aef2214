"""The audit checkpoint signer's files in the local stack: a generated dev key and the log.

Under ``<stack folder>/audit/``, outside every database: ``signing-key.pem`` (Ed25519, made
once and kept, mode 0600), ``public-keys.pem`` (the keyring a verifier takes) and
``checkpoints.jsonl`` (the append-only checkpoint log the audit_service replicas share).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AuditKeyFiles:
    folder: Path

    @property
    def signing_key(self) -> Path:
        return self.folder / "signing-key.pem"

    @property
    def public_keys(self) -> Path:
        return self.folder / "public-keys.pem"

    @property
    def checkpoint_log(self) -> Path:
        return self.folder / "checkpoints.jsonl"

    def ensure(self) -> None:
        """Generate the dev key (once) and its public half."""
        from audit_service.checkpoints import load_private_key, new_private_pem, public_pem

        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.signing_key.exists():
            fd = os.open(self.signing_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(new_private_pem())
        if not self.public_keys.exists():
            self.public_keys.write_bytes(public_pem(load_private_key(self.signing_key)))

    def env(self) -> dict[str, str]:
        """What an audit_service process needs to sign and serve checkpoints."""
        return {
            "MEDSVC_AUDIT_SIGNING_KEY_FILE": str(self.signing_key),
            "MEDSVC_AUDIT_PUBLIC_KEYS_FILE": str(self.public_keys),
            "MEDSVC_AUDIT_CHECKPOINT_LOG": str(self.checkpoint_log),
        }
