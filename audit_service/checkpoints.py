"""Signed checkpoints and the append-only checkpoint log that lives outside the audit database.

A checkpoint says "the audit log's first ``treeSize`` events have the Merkle root ``rootHash``",
signed with Ed25519. Whoever holds one can later prove, with a consistency proof, that the log
was only ever appended to; a database superuser, who can rewrite rows and re-hash the chain,
cannot produce a tree that matches a checkpoint signed before the rewrite.

Signed bytes (the "statement"), UTF-8, each line ending in ``\\n``::

    medsvc-audit-checkpoint/v1
    <treeSize>
    <rootHash, 64 lowercase hex>
    <signedAt, RFC 3339 UTC with Z>
    <keyId>

``keyId`` is the first 16 hex digits of SHA-256 of the raw 32-byte public key, so a verifier
finds the key in a keyring of public keys (old keys stay verifiable after a rotation).

The log is a file of JSON lines, one checkpoint a line. Besides the five signed fields a line
carries two unsigned helpers, each checked against the signed root before use:
``compactRange`` (the tree's peaks: the signer extends the last checkpoint from them, so it
never re-reads history it already signed) and ``consistency`` (the proof from the previous
checkpoint, so the log alone shows it is append-only). Writers append under ``flock``.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit_service.merkle import CompactRange, check_consistency, fold_peaks
from audit_service.models import SignedCheckpoint

STATEMENT_HEADER = "medsvc-audit-checkpoint/v1"


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM (PKCS#8) file."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_keys(paths: list[Path]) -> dict[str, Ed25519PublicKey]:
    """A keyring: every Ed25519 public key in the PEM files ``paths`` (a file may hold several)."""
    ring: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        text = path.read_bytes()
        for block in text.split(b"-----END PUBLIC KEY-----"):
            if b"-----BEGIN PUBLIC KEY-----" not in block:
                continue
            key = serialization.load_pem_public_key(block + b"-----END PUBLIC KEY-----\n")
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{path} holds a key that is not Ed25519")
            ring[key_id(key)] = key
    return ring


def public_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def new_private_pem() -> bytes:
    """A fresh Ed25519 key as PKCS#8 PEM (the local stack's dev key)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Checkpoint:
    """One line of the checkpoint log."""

    tree_size: int
    root_hash: str
    signed_at: str
    key_id: str
    signature: str
    compact_range: list[str] = field(default_factory=list)
    consistency: list[str] = field(default_factory=list)

    def statement(self) -> bytes:
        return (
            f"{STATEMENT_HEADER}\n{self.tree_size}\n{self.root_hash}\n{self.signed_at}\n{self.key_id}\n"
        ).encode()

    def public(self) -> SignedCheckpoint:
        """The API form: the signed fields only."""
        return SignedCheckpoint.model_construct(
            treeSize=self.tree_size, rootHash=self.root_hash, signedAt=self.signed_at,
            keyId=self.key_id, signature=self.signature,
        )  # fmt: skip

    def line(self) -> bytes:
        """The log's line: the API form's fields, then what the next checkpoint needs."""
        return orjson.dumps({
            **self.public().model_dump(), "compactRange": self.compact_range,
            "consistency": self.consistency,
        }) + b"\n"  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Checkpoint:
        d = orjson.loads(raw)
        return cls(
            int(d["treeSize"]), str(d["rootHash"]), str(d["signedAt"]), str(d["keyId"]),
            str(d["signature"]), [str(x) for x in d.get("compactRange", [])],
            [str(x) for x in d.get("consistency", [])],
        )  # fmt: skip

    def range(self) -> CompactRange:
        return CompactRange(self.tree_size, [bytes.fromhex(p) for p in self.compact_range])


def sign(key: Ed25519PrivateKey, tree: CompactRange, consistency: list[bytes],
         at: dt.datetime | None = None) -> Checkpoint:  # fmt: skip
    """A checkpoint of ``tree`` signed with ``key``."""
    unsigned = Checkpoint(
        tree.size,
        tree.root().hex(),
        _rfc3339(at or dt.datetime.now(dt.UTC)),
        key_id(key.public_key()),
        "",
    )
    signature = base64.b64encode(key.sign(unsigned.statement())).decode()
    return Checkpoint(
        unsigned.tree_size, unsigned.root_hash, unsigned.signed_at, unsigned.key_id, signature,
        [p.hex() for p in tree.peaks], [c.hex() for c in consistency],
    )  # fmt: skip


def signature_problem(cp: Checkpoint, keyring: Mapping[str, Ed25519PublicKey]) -> str | None:
    """Why ``cp``'s signature does not hold (None when it does)."""
    key = keyring.get(cp.key_id)
    if key is None:
        return f"checkpoint of treeSize {cp.tree_size} names key {cp.key_id}, not in the keyring"
    try:
        key.verify(base64.b64decode(cp.signature, validate=True), cp.statement())
    except (InvalidSignature, ValueError):
        return f"checkpoint of treeSize {cp.tree_size} has a bad signature"
    return None


def checkpoint_problem(cp: Checkpoint, prev: Checkpoint | None,
                       keyring: Mapping[str, Ed25519PublicKey]) -> str | None:  # fmt: skip
    """Everything the log alone can show about ``cp``: its signature, that its compact range
    folds to its root, and that it extends ``prev`` (consistency proof, or equal trees)."""
    problem = signature_problem(cp, keyring)
    if problem:
        return problem
    try:
        peaks = [bytes.fromhex(p) for p in cp.compact_range]
        proof = [bytes.fromhex(p) for p in cp.consistency]
    except ValueError:
        return f"checkpoint of treeSize {cp.tree_size} has a malformed line"
    if len(peaks) != cp.tree_size.bit_count() or fold_peaks(peaks).hex() != cp.root_hash:
        return f"checkpoint of treeSize {cp.tree_size}: its compact range does not match its root"
    if prev is not None:
        if cp.tree_size < prev.tree_size:
            return f"checkpoint of treeSize {cp.tree_size} is smaller than the one before it"
        if not check_consistency(prev.tree_size, cp.tree_size, bytes.fromhex(prev.root_hash),
                                 bytes.fromhex(cp.root_hash), proof):  # fmt: skip
            return (f"checkpoint of treeSize {cp.tree_size} is not consistent with the one of "
                    f"treeSize {prev.tree_size}")  # fmt: skip
    return None


class CheckpointLog:
    """The append-only file of checkpoints (JSON lines). Readers tolerate a torn last line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[Checkpoint]:
        """Every complete line, oldest first (an unterminated last line is a write in progress)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        return [Checkpoint.parse(line) for line in lines[:-1] if line.strip()]

    def read_checked(self, memo: dict[str, Any]) -> tuple[list[Checkpoint], int]:
        """Every checkpoint, and how many of the first ones ``memo`` says were checked before:
        the log is append-only, so a checked prefix whose bytes are unchanged (same SHA-256)
        need not have its signatures and proofs checked again. Callers update ``memo`` with
        :meth:`remember` once the log checked out."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        lines = [ln for ln in data[:end].split(b"\n") if ln.strip()]
        checkpoints = [Checkpoint.parse(ln) for ln in lines]
        length, digest, count = memo.get("length", 0), memo.get("sha256"), memo.get("count", 0)
        unchanged = 0 < length <= end and hashlib.sha256(data[:length]).hexdigest() == digest
        memo["pending"] = (end, hashlib.sha256(data[:end]).hexdigest(), len(checkpoints))
        return checkpoints, count if unchanged else 0

    @staticmethod
    def remember(memo: dict[str, Any]) -> None:
        """Record the prefix :meth:`read_checked` last read as checked."""
        if "pending" in memo:
            memo["length"], memo["sha256"], memo["count"] = memo.pop("pending")

    def last(self) -> Checkpoint | None:
        """The newest checkpoint, reading only the end of the file."""
        try:
            with self.path.open("rb") as f:
                size = f.seek(0, os.SEEK_END)
                chunk = 4096
                while True:
                    start = max(0, size - chunk)
                    f.seek(start)
                    data = f.read(size - start)
                    lines = data.split(b"\n")[:-1]
                    complete = lines if start == 0 else lines[1:]
                    complete = [ln for ln in complete if ln.strip()]
                    if complete:
                        return Checkpoint.parse(complete[-1])
                    if start == 0:
                        return None
                    chunk *= 4
        except FileNotFoundError:
            return None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the log's writer lock (one signer at a time, across processes)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @asynccontextmanager
    async def locked_async(self) -> AsyncIterator[None]:
        """:meth:`locked` for a coroutine: waits for the lock in a thread, not on the loop."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, cp: Checkpoint) -> None:
        """Append one line and fsync it (call under :meth:`locked`)."""
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, cp.line())
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Notary:
    """What a process needs to sign and check checkpoints: the log, the key, the keyring."""

    log: CheckpointLog
    key: Ed25519PrivateKey | None
    keyring: dict[str, Ed25519PublicKey]

    @classmethod
    def load(cls, log_path: Path | None, key_path: Path | None,
             public_keys: Path | None) -> Notary | None:  # fmt: skip
        """None when no checkpoint log is configured."""
        if log_path is None:
            return None
        keyring = load_public_keys([public_keys]) if public_keys else {}
        key = load_private_key(key_path) if key_path else None
        if key is not None:
            keyring[key_id(key.public_key())] = key.public_key()
        return cls(CheckpointLog(log_path), key, keyring)
