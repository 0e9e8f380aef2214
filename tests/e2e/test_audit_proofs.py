"""Signed checkpoints and proofs through nginx, checked as an outside client would: with the
public key and a few lines of RFC 6962 hashing written here, trusting nothing the server says.

(The client holding an older checkpoint against a rewritten history: test_audit_mutations.py.)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from audit_service.chain import canonical
from tests.e2e.api import Api, unique


@pytest.fixture
def admin(http, stack, admin_token) -> Api:
    return Api(http, stack.base_url, admin_token)


@pytest.fixture
def auditor(http, stack, token) -> Api:
    return Api(http, stack.base_url, token("audrey.auditor", "auditor"))


# -- the client's own RFC 6962 (section 2.1, RFC 9162 section 2.1.3/2.1.4 verification) --------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def root_from_path(index: int, size: int, leaf: bytes, path: list[bytes]) -> bytes:
    fn, sn, r = index, size - 1, leaf
    for p in path:
        assert sn > 0, "proof too long"
        if fn & 1 or fn == sn:
            r = _h(b"\x01" + p + r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _h(b"\x01" + r + p)
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0, "proof too short"
    return r


def consistent(m: int, n: int, old: bytes, new: bytes, proof: list[bytes]) -> bool:
    if m == n:
        return not proof and old == new
    path = ([old] if m & (m - 1) == 0 else []) + proof
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _h(b"\x01" + c + fr), _h(b"\x01" + c + sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _h(b"\x01" + sr + c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old and sr == new


def signature_holds(cp: dict[str, Any], public_pem: bytes) -> bool:
    key = serialization.load_pem_public_key(public_pem)
    statement = (f"medsvc-audit-checkpoint/v1\n{cp['treeSize']}\n{cp['rootHash']}\n"
                 f"{cp['signedAt']}\n{cp['keyId']}\n").encode()  # fmt: skip
    try:
        key.verify(base64.b64decode(cp["signature"]), statement)  # type: ignore[union-attr]
    except InvalidSignature:
        return False
    return True


def leaf_of(event: dict[str, Any]) -> bytes:
    """The leaf hash of an event as the API returns it: its canonical form without the hashes."""
    body = {k: v for k, v in event.items() if k not in ("hash", "prevHash")}
    return _h(b"\x00" + canonical(body))


async def checkpoint_covering(api: Api, admin: Api, stack, seq: int) -> dict[str, Any]:
    """The latest checkpoint once it covers ``seq`` (signed on demand, else within 10 s)."""
    for _ in range(60):
        reply = await api.call("GET", "/v1/audit/checkpoints/latest")
        if reply.status == 200 and reply.body["treeSize"] >= seq:
            return reply.body
        await asyncio.sleep(0.5)
    raise AssertionError("no checkpoint covered the event within 30 s")


async def record(admin: Api, entity: str, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        reply = await admin.call(
            "POST",
            "/v1/audit/events",
            {
                "entityType": "prescription",
                "entityId": entity,
                "action": "sign",
                "after": {"dose": i},
            },
        )
        assert reply.status == 201, reply.body
        out.append(reply.body)
    return out


async def test_checkpoints_are_signed_within_10_seconds_and_verify_with_the_public_key(
    admin: Api,
    auditor: Api,
    stack,
) -> None:
    events = await record(admin, unique("aud.cp"), 3)
    # No on-demand signing here: the service's own round (at most 10 s) must cover the events.
    cp = await checkpoint_covering(auditor, admin, stack, events[-1]["seq"])
    assert set(cp) == {"treeSize", "rootHash", "signedAt", "keyId", "signature"}
    assert signature_holds(cp, stack.audit_keys.public_keys.read_bytes())
    forged = {**cp, "treeSize": cp["treeSize"] - 1}
    assert not signature_holds(forged, stack.audit_keys.public_keys.read_bytes())
    # The checkpoint log is a file under the stack's folder, not in the database.
    assert stack.audit_keys.checkpoint_log.exists()


async def test_an_event_is_proved_in_a_checkpoint_by_an_independent_client(
    admin: Api,
    auditor: Api,
    stack,
) -> None:
    events = await record(admin, unique("aud.proof"), 5)
    cp = await checkpoint_covering(auditor, admin, stack, events[-1]["seq"])
    assert signature_holds(cp, stack.audit_keys.public_keys.read_bytes())
    for event in events:
        reply = await auditor.call("GET", f"/v1/audit/events/{event['eventId']}/proof",
                                   params={"treeSize": str(cp["treeSize"])})  # fmt: skip
        assert reply.status == 200, reply.body
        proof = reply.body
        assert proof["leafIndex"] == event["seq"] - 1 and proof["treeSize"] == cp["treeSize"]
        root = root_from_path(proof["leafIndex"], proof["treeSize"], leaf_of(event),
                              [bytes.fromhex(h) for h in proof["auditPath"]])  # fmt: skip
        assert root.hex() == cp["rootHash"]
        # The same proof does not make an altered event pass.
        altered = {**event, "after": {"dose": 99}}
        path = [bytes.fromhex(h) for h in proof["auditPath"]]
        root = root_from_path(proof["leafIndex"], proof["treeSize"], leaf_of(altered), path)
        assert root.hex() != cp["rootHash"]
    # Without treeSize: the proof is in the latest checkpoint's tree.
    default = await auditor.call("GET", f"/v1/audit/events/{events[0]['eventId']}/proof")
    assert default.status == 200 and default.body["treeSize"] >= events[0]["seq"]


async def test_consistency_between_two_checkpoints_checks_independently(
    admin: Api,
    auditor: Api,
    stack,
) -> None:
    first = await record(admin, unique("aud.cons"), 2)
    old = await checkpoint_covering(auditor, admin, stack, first[-1]["seq"])
    later = await record(admin, unique("aud.cons"), 3)
    new = await checkpoint_covering(auditor, admin, stack, later[-1]["seq"])
    sizes = {"from": str(old["treeSize"]), "to": str(new["treeSize"])}
    reply = await auditor.call("GET", "/v1/audit/consistency", params=sizes)
    assert reply.status == 200, reply.body
    assert reply.body["from"] == old["treeSize"] and reply.body["to"] == new["treeSize"]
    proof = [bytes.fromhex(h) for h in reply.body["proof"]]
    assert consistent(old["treeSize"], new["treeSize"], bytes.fromhex(old["rootHash"]),
                      bytes.fromhex(new["rootHash"]), proof)  # fmt: skip
    # A made-up older root does not pass.
    assert not consistent(old["treeSize"], new["treeSize"], _h(b"made up"),
                          bytes.fromhex(new["rootHash"]), proof)  # fmt: skip


async def test_roles_and_bad_input_of_the_new_endpoints(
    admin: Api, auditor: Api, http, stack, token
) -> None:
    event = (await record(admin, unique("aud.roles"), 1))[0]
    await checkpoint_covering(auditor, admin, stack, event["seq"])
    paths = ["/v1/audit/checkpoints/latest", f"/v1/audit/events/{event['eventId']}/proof",
             "/v1/audit/consistency?from=1&to=1"]  # fmt: skip
    for role in ("admin", "auditor"):
        api = Api(http, stack.base_url, token(f"x.{role}", role))
        for path in paths:
            assert (await api.call("GET", path)).status == 200, (role, path)
    for role in ("clinician", "patient", "researcher"):
        api = Api(http, stack.base_url, token(f"x.{role}", role))
        for path in paths:
            reply = await api.call("GET", path)
            assert reply.status == 403 and reply.problem, (role, path, reply.status)
    anonymous = Api(http, stack.base_url, None)
    assert (await anonymous.call("GET", paths[0])).status == 401
    bad = [
        (f"/v1/audit/events/{event['eventId']}/proof", {"treeSize": "0"}, 400),
        (f"/v1/audit/events/{event['eventId']}/proof", {"treeSize": "abc"}, 400),
        (
            f"/v1/audit/events/{event['eventId']}/proof",
            {"treeSize": str(event["seq"] - 1 or 10**15)},
            400,
        ),
        (f"/v1/audit/events/{event['eventId']}/proof", {"treeSize": "99999999999999"}, 400),
        (f"/v1/audit/events/{event['eventId']}/proof", {"size": "1"}, 422),
        ("/v1/audit/events/00000000-0000-4000-8000-000000000009/proof", {}, 404),
        ("/v1/audit/events/not-a-uuid/proof", {}, 404),
        ("/v1/audit/consistency", {"from": "2"}, 400),
        ("/v1/audit/consistency", {"from": "3", "to": "2"}, 400),
        ("/v1/audit/consistency", {"from": "0", "to": "2"}, 400),
        ("/v1/audit/consistency", {"from": "1", "to": "99999999999999"}, 400),
        ("/v1/audit/consistency", {"from": "1", "to": "2", "x": "1"}, 422),
    ]
    for path, params, status in bad:
        reply = await auditor.call("GET", path, params=params)
        assert reply.status == status and reply.problem, (path, params, reply.status, reply.body)
