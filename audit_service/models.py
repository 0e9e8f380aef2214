"""Request bodies of the audit API, validated strictly (JSON types as sent, unknown fields 422),
and the bodies of its responses."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, create_model

from shared.entity import OmitsNone
from shared.types import no_nul

_STRICT = ConfigDict(extra="forbid", strict=True)

# An entity type or action: a short identifier ("user", "visit", "study", "create", ...).
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
# The longest entityId and actor a filter of the event list takes: even percent-encoded
# (12 bytes a character at worst) a full query stays within the 8 KiB request line that nginx
# and aiohttp accept.
FILTER_MAX_LENGTH = 256


class EventIn(BaseModel):
    """An event as a shard's outbox relay ships it (its eventId fixed in the outbox).

    No length limits here: whatever a shard committed must be storable, or the shard's relay
    would retry the batch forever (a token's ``sub``, the actor, has no length limit).
    """

    model_config = _STRICT

    eventId: uuid.UUID
    entityType: Name
    entityId: Annotated[str, no_nul(1 << 20, 1)]
    action: Name
    actor: Annotated[str, no_nul(1 << 20, 1)]
    occurredAt: AwareDatetime
    source: Annotated[str, no_nul(1 << 20, 1)]
    requestId: Annotated[str, no_nul(1 << 20)] | None = None
    changes: list[Annotated[str, no_nul(1 << 20)]] = Field(default_factory=list)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


class EventBatch(BaseModel):
    """``POST /internal/events/batch``: events in the order they are to enter the chain."""

    model_config = _STRICT

    events: list[EventIn] = Field(min_length=1, max_length=5000)


class NewEvent(BaseModel):
    """``POST /v1/audit/events``: an event of any entity type, recorded by an admin or a service.

    ``eventId`` makes the call idempotent (the same id and content again → the stored event);
    ``actor`` defaults to the caller, ``occurredAt`` to now.
    """

    model_config = _STRICT

    eventId: uuid.UUID | None = None
    entityType: Name
    entityId: Annotated[str, no_nul(512, 1)]
    action: Name
    actor: Annotated[str, no_nul(256, 1)] | None = None
    occurredAt: AwareDatetime | None = None
    changes: list[Annotated[str, no_nul(128)]] = Field(default_factory=list, max_length=256)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


# -- responses --------------------------------------------------------------------------------

Hash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Event(BaseModel):
    """A stored event as the API returns it: its canonical body plus ``hash`` and ``prevHash``."""

    eventId: uuid.UUID
    seq: int = Field(ge=1)
    entityType: str
    entityId: str
    action: str
    actor: str
    occurredAt: dt.datetime
    source: str
    requestId: str | None
    changes: list[str]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    hash: Hash
    prevHash: Hash = Field(description="the previous event's hash (64 zeros for seq 1)")


class EventPage(BaseModel):
    """One page of events, oldest first."""

    items: list[Event]
    nextCursor: str | None


class ChainVerdict(OmitsNone):
    """What ``GET /v1/audit/verify`` found (``audit_service.chain.Verdict.model``)."""

    # An intact chain's verdict has no such keys (rather than nulls).
    OMITTED_WHEN_NONE = ("firstBadSeq", "reason")

    ok: bool
    checked: int = Field(ge=0, description="events verified")
    lastSeq: int = Field(ge=0, description="the last verified event's seq")
    firstBadSeq: int | None = Field(default=None, description="when not ok: the first bad event")
    reason: str | None = Field(default=None, description="when not ok: what is wrong")


class SignedCheckpoint(BaseModel):
    """``GET /v1/audit/checkpoints/latest``: a signed statement of the first treeSize events."""

    treeSize: int = Field(ge=0, description="events covered (seq 1..treeSize)")
    rootHash: Hash = Field(description="RFC 6962 Merkle root of those events, hex")
    signedAt: str = Field(description="when it was signed (RFC 3339, UTC)")
    keyId: str = Field(description="the signing key: first 16 hex digits of SHA-256 of the raw "
                       "Ed25519 public key")  # fmt: skip
    signature: str = Field(
        description="base64 Ed25519 signature of the statement "
        "'medsvc-audit-checkpoint/v1\\n{treeSize}\\n{rootHash}\\n{signedAt}\\n"
        "{keyId}\\n'"
    )


class InclusionProof(BaseModel):
    """``GET /v1/audit/events/{eventId}/proof``: RFC 6962 PATH of the event's leaf."""

    leafIndex: int = Field(ge=0, description="seq - 1")
    treeSize: int = Field(ge=1)
    auditPath: list[Hash] = Field(description="sibling hashes, leaf level first (hex)")


# A field named ``from`` (a Python keyword, so no class statement can name it): the model's
# ``__dict__`` keys are the body's keys, which shared/entity.encode writes.
_CONSISTENCY_FIELDS: dict[str, Any] = {
    "from": (int, Field(ge=1)),
    "to": (int, Field(ge=1)),
    "proof": (list[Hash], Field(description="hex node hashes, in RFC 6962 order")),
}
ConsistencyProof = create_model(
    "ConsistencyProof",
    __doc__="``GET /v1/audit/consistency``: RFC 6962 PROOF(from, D[to]).",
    **_CONSISTENCY_FIELDS,
)
