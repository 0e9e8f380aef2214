"""An entity has one JSON shape: the API's body and the audit event's ``before``/``after``.

The audit triggers shape a captured row in SQL (``audit_user_api``, ``audit_visit_api``, in
each service's migrations), where no Python model can reach; these tests keep that SQL in step
with the response models of shared/entity.py, on the migrated schema itself.
"""

from __future__ import annotations

import asyncpg
import orjson
import pytest

from shared.entity import SERVER_FIELDS, Entity
from tests.e2e.api import Api
from user_service.models import Consent, User
from visit_service.models import Visit

# entity_type of the outbox -> the response model its events show.
AUDITED: dict[str, type[Entity]] = {"user": User, "visit": Visit, "study_consent": Consent}


async def shaped(dsn: str, entity_type: str) -> list[dict]:
    """What the relay ships as ``after`` for each outbox row of ``entity_type``, in order."""
    conn = await asyncpg.connect(dsn)
    try:
        fn = await conn.fetchval(
            "SELECT api_function::text FROM audit_entity_types WHERE entity_type = $1",
            entity_type,
        )
        rows = await conn.fetch(
            f"SELECT {fn}(row_after)::text AS a FROM audit_outbox WHERE entity_type = $1"
            " ORDER BY id",
            entity_type,
        )
    finally:
        await conn.close()
    return [orjson.loads(r["a"]) for r in rows]


async def test_the_audit_field_lists_are_the_models_fields(shard_db: str) -> None:
    # `changes` of an event compares these fields: every field of the model a client can see
    # change, in the model's order, and none of the server's bookkeeping.
    conn = await asyncpg.connect(shard_db)
    try:
        registered = {
            r["entity_type"]: list(r["fields"])
            for r in await conn.fetch("SELECT entity_type, fields FROM audit_entity_types")
        }
    finally:
        await conn.close()
    assert registered == {
        name: [f for f in model.model_fields if f not in SERVER_FIELDS]
        for name, model in AUDITED.items()
    }


@pytest.mark.parametrize("entity_type", ["user", "visit"])
async def test_an_audit_event_shows_the_entity_as_the_api_does(
    admin: Api, shard_db: str, entity_type: str
) -> None:
    patient = await admin.create_patient(
        email="a@example.org", address={"postalCode": "62701", "country": "US", "city": "S"}
    )
    path, first = f"/v1/users/{patient['userName']}", patient
    if entity_type == "visit":
        visit = await admin.create_visit(
            patient["userName"],
            endedAt="2026-11-20T10:30:00.250+01:00",
            diagnoses=[{"system": "ICD-10", "code": "E11.9", "display": "T2D"}],
            vitals={"heartRate": 70, "temperatureC": 36.8},
            medications=[{"name": "metformin", "system": "RxNorm", "code": "860975"}],
        )
        path, first = f"{path}/visits/{visit['visitId']}", visit
    change = {"notes": "n"} if entity_type == "visit" else {"phone": "555"}
    patched = await admin.call("PATCH", path, change)
    assert patched.status == 200, patched.body
    read = (await admin.call("GET", path)).body
    assert list(read) == list(AUDITED[entity_type].model_fields)
    assert await shaped(shard_db, entity_type) == [first, read]
