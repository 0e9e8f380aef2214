"""``python -m audit_service verify``: check the audit log without trusting the service.

Takes the checkpoint log and the public key(s), and optionally the events: from the audit
database (``--dsn``, read-only) or from an export (``--export``: JSON lines, one event a line
as ``GET /v1/audit/events`` returns them). Without events it checks the checkpoint log alone
(signatures, compact ranges, consistency from each checkpoint to the next). Prints the verdict
as JSON; exit status 0 when the log verifies, 1 when it does not, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson

from audit_service.chain import StoredEvent, Verdict, canonical, subject_of
from audit_service.checkpoints import CheckpointLog, load_public_keys
from audit_service.verify import LogVerifier, verify_database
from shared.entity import encode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m audit_service verify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoints", required=True, type=Path, help="the checkpoint log file")
    parser.add_argument("--public-key", required=True, type=Path, action="append",
                        help="PEM file of public key(s); repeat for old keys")  # fmt: skip
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dsn", help="the audit database (any role that may read audit_events)")
    source.add_argument("--export", type=Path, help="JSON lines of events as the API returns them")
    return parser


def _exported(path: Path) -> Iterator[StoredEvent]:
    """Events of an export: the canonical body is the event without hash and prevHash."""
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            event = orjson.loads(line)
            digest, prev = event.pop("hash"), event.pop("prevHash")
            body = canonical(event).decode("utf-8")
            occurred = dt.datetime.fromisoformat(event["occurredAt"].replace("Z", "+00:00"))
            yield StoredEvent(
                event["seq"], event["eventId"], event["entityType"], event["entityId"],
                subject_of(event["entityType"], event["entityId"]), event["actor"], occurred,
                body, prev, digest,
            )  # fmt: skip


async def run(argv: list[str]) -> Verdict:
    """Parse ``argv`` (after ``verify``) and verify; the verdict."""
    args = _parser().parse_args(argv)
    checkpoints = CheckpointLog(args.checkpoints).read()
    keyring = load_public_keys(args.public_key)
    if args.dsn:
        conn = await asyncpg.connect(args.dsn)
        try:
            return await verify_database(conn, checkpoints, keyring)
        finally:
            await conn.close()
    verifier = LogVerifier(checkpoints, keyring, check_nodes=False)
    if not verifier.check_log():
        return verifier.verdict
    if args.export is None:
        return verifier.verdict
    for ev in _exported(args.export):
        if not verifier.feed(ev):
            break
    return verifier.finish(None)


def main(argv: list[str]) -> int:
    verdict = asyncio.run(run(argv))
    sys.stdout.write(encode(verdict.model()).decode() + "\n")
    return 0 if verdict.ok else 1
