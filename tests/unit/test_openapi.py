"""The published contract: valid OpenAPI 3.1, listing exactly the routes the code serves."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from openapi_spec_validator import validate

from anonymizer import deidentify, kanon
from anonymizer.app import create_app as create_anonymizer
from anonymizer.models import Record, Run, Study, StudyIn
from anonymizer.settings import AnonymizerSettings
from apidoc.openapi import build_document
from apidoc.operations import OPERATIONS, Operation
from audit_service import chain
from audit_service import routes as audit_routes
from audit_service import store as audit_store
from audit_service.app import create_app as create_audit
from audit_service.models import ChainVerdict, Event, NewEvent
from audit_service.settings import AuditSettings
from fe_server.app import SERVICES
from fe_server.app import create_app as create_fe
from gateway.api import ApiTable, api_table
from gateway.app import create_app as create_gateway
from gateway.routes import not_found
from shared.entity import encode
from shared.settings import FESettings, GatewaySettings
from shared.shardmap import Shard, ShardMap, even_ranges
from user_service.models import Consent, UserIn
from visit_service.models import VisitIn

OPERATION_IDS = {
    "createUser", "searchUsers", "getUser", "patchUser",
    "createVisit", "listVisits", "getVisit", "patchVisit",
    "listConsents", "giveConsent", "withdrawConsent",
    "createStudy", "listStudies", "getStudy", "startRun", "listRuns", "getRun", "getRunRecords",
    "listAuditEvents", "recordAuditEvent", "getAuditEvent", "verifyAuditChain",
    "getLatestAuditCheckpoint", "getAuditInclusionProof", "getAuditConsistencyProof",
    "getOpenApiDocument",
}  # fmt: skip
# Values for every path parameter the document names.
PATH_VALUES = {
    "userName": "alice.smith", "visitId": "00000000-0000-4000-8000-000000000000",
    "studyId": "diabetes-2026", "runId": "00000000-0000-4000-8000-000000000001",
    "eventId": "00000000-0000-4000-8000-000000000002",
}  # fmt: skip
DSN = "postgresql://x@127.0.0.1:1/x"


def shard_map() -> ShardMap:
    return ShardMap(shards=[Shard(id=i, buckets=r, postgres=DSN)
                            for i, r in enumerate(even_ranges(2))])  # fmt: skip


def apps() -> list[web.Application]:
    """Every app that serves /v1, built by its factory (no I/O happens until startup)."""
    fe = create_fe(FESettings(shard=0, services=",".join(SERVICES)), shard_map())
    return [
        fe,
        create_gateway(GatewaySettings(), shard_map()),
        create_audit(AuditSettings(audit_dsn=DSN)),
        create_anonymizer(AnonymizerSettings(anonymizer_dsn=DSN), shard_map(), role="api"),
    ]


def registered_routes() -> set[tuple[str, str]]:
    """(method, path template) of every concrete /v1 route; catch-alls (``*``) are not endpoints."""
    return {
        (route.method, route.resource.canonical)
        for app in apps()
        for route in app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method not in ("*", "HEAD")
    }


@pytest.fixture(scope="module")
def document() -> dict:
    return build_document()


def test_the_document_is_valid_openapi_3_1(document: dict) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"
    # Served as JSON: it must survive the encoder unchanged.
    assert orjson.loads(orjson.dumps(document)) == document


def test_every_operation_has_its_agreed_id(document: dict) -> None:
    ids = [op["operationId"] for methods in document["paths"].values() for op in methods.values()]
    assert sorted(ids) == sorted(OPERATION_IDS)


def test_the_routes_the_code_registers_are_the_operations_the_document_lists(
    document: dict,
) -> None:
    listed = {
        (method.upper(), path) for path, methods in document["paths"].items() for method in methods
    }
    assert registered_routes() == listed


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.operation_id)
async def test_the_gateway_routes_every_operation_somewhere(op: Operation) -> None:
    gateway = create_gateway(GatewaySettings(), shard_map())
    path = op.path.format(**PATH_VALUES)
    match = await gateway.router.resolve(make_mocked_request(op.method, path, app=gateway))
    assert match.http_exception is None
    assert match.handler is not not_found


def test_bodies_are_the_models_the_services_validate_with(document: dict) -> None:
    schemas = document["components"]["schemas"]
    for model in (UserIn, VisitIn, StudyIn, NewEvent):
        own = model.model_json_schema(ref_template="#/components/schemas/{model}")
        own.pop("$defs", None)
        assert schemas[model.__name__] == own
    create_user = document["paths"]["/v1/users"]["post"]
    assert create_user["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UserIn"
    }


def test_patches_take_merge_patch_json_and_if_match(document: dict) -> None:
    for path in ("/v1/users/{userName}", "/v1/users/{userName}/visits/{visitId}"):
        patch = document["paths"][path]["patch"]
        assert set(patch["requestBody"]["content"]) == {
            "application/json",
            "application/merge-patch+json",
        }
        assert {"$ref": "#/components/parameters/If-Match"} in patch["parameters"]
        assert "412" in patch["responses"]


def test_a_field_that_cannot_be_removed_admits_no_null(document: dict) -> None:
    user_patch = document["components"]["schemas"]["UserPatch"]["properties"]
    assert user_patch["givenName"]["type"] == "string" and "default" not in user_patch["givenName"]
    assert {"type": "null"} in user_patch["email"]["anyOf"]
    visit_patch = document["components"]["schemas"]["VisitPatch"]["properties"]
    assert "anyOf" not in visit_patch["startedAt"] and "anyOf" not in visit_patch["type"]


def test_errors_are_problem_documents_with_request_ids(document: dict) -> None:
    components = document["components"]
    problem = components["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    for status, response in components["responses"].items():
        assert set(response["content"]) == {"application/problem+json"}, status
        assert "X-Request-ID" in response["headers"], status
    assert "Retry-After" in components["responses"]["ServiceUnavailable"]["headers"]
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            codes = set(op["responses"])
            if op.get("security") != []:
                assert {"401", "429", "503"} <= codes, (method, path)


def test_creates_answer_location_and_etag(document: dict) -> None:
    for path in ("/v1/users", "/v1/users/{userName}/visits"):
        created = document["paths"][path]["post"]["responses"]["201"]
        assert {"ETag", "Location", "X-Request-ID"} <= set(created["headers"])


def test_bearer_jwt_is_required_everywhere_but_the_document_itself(document: dict) -> None:
    assert document["security"] == [{"bearerAuth": []}]
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    public = [
        op["operationId"]
        for m in document["paths"].values()
        for op in m.values()
        if op.get("security") == []
    ]
    assert public == ["getOpenApiDocument"]


def test_links_lead_from_created_resources_to_their_next_steps(document: dict) -> None:
    by_id = {
        op["operationId"]: (path, op) for path, m in document["paths"].items() for op in m.values()
    }

    def links(operation_id: str, status: str) -> dict:
        return by_id[operation_id][1]["responses"][status]["links"]

    expected = {
        ("createUser", "201"): {"getUser", "patchUser", "createVisit"},
        ("createVisit", "201"): {"getVisit", "patchVisit"},
        ("createStudy", "201"): {"getStudy", "startRun", "listRuns"},
        ("startRun", "202"): {"getRun", "getRunRecords"},
        ("recordAuditEvent", "201"): {"getAuditEvent"},
    }
    for (source, status), targets in expected.items():
        found = links(source, status)
        assert targets <= {link["operationId"] for link in found.values()}, source
        for link in found.values():
            path, _ = by_id[link["operationId"]]
            # Every path parameter of the target comes from the created resource's body.
            assert set(link["parameters"]) == set(re.findall(r"{(\w+)}", path))
            assert all(v.startswith("$response.body#/") for v in link["parameters"].values())


def test_a_started_run_is_accepted_with_its_location(document: dict) -> None:
    started = document["paths"]["/v1/studies/{studyId}/runs"]["post"]
    assert "requestBody" not in started
    accepted = started["responses"]["202"]
    assert {"Location", "X-Request-ID"} <= set(accepted["headers"])
    assert accepted["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Run"}
    assert "409" in started["responses"]


def test_records_are_ndjson_lines_of_the_record_model(document: dict) -> None:
    records = document["paths"]["/v1/studies/{studyId}/runs/{runId}/records"]["get"]
    assert set(records["responses"]["200"]["content"]) == {"application/x-ndjson"}
    schema = records["responses"]["200"]["content"]["application/x-ndjson"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Record"}
    kinds = document["components"]["schemas"]["Record"]["discriminator"]["mapping"]
    assert set(kinds) == {"participant", "visit", "withdrawal"}


def test_what_the_anonymizer_emits_is_a_record() -> None:
    keys = deidentify.StudyKeys(b"k" * 32, "diabetes-2026")
    pid = keys.pid("alice.smith")
    started = dt.datetime(2026, 11, 20, 9, tzinfo=dt.UTC)
    emitted = [
        deidentify.participant(keys, "alice.smith", dt.date(1930, 4, 2), "female",
                               {"postalCode": "62701", "country": "US"}, 1936),
        deidentify.visit(keys, pid, "00000000-0000-4000-8000-000000000000", "outpatient",
                         started, started + dt.timedelta(minutes=30),
                         [{"system": "ICD-10", "code": "E11.9", "display": "x"}],
                         {"heartRate": 70, "temperatureC": 36.8}, [{"name": "metformin"}]),
        deidentify.withdrawal(pid),
    ]  # fmt: skip
    released, _ = kanon.release({pid: emitted[0], "other": {**emitted[0], "pid": "1" * 32}}, 3)
    for record in [*emitted, *released.values()]:
        Record.model_validate(record)


def test_what_the_studies_api_and_consents_answer_are_the_documented_models() -> None:
    now = dt.datetime.now(dt.UTC)
    run = {
        "run_id": uuid.uuid4(), "study_id": "diabetes-2026", "status": "failed", "trigger": "api",
        "requested_by": "rita", "started_at": now, "finished_at": now,
        "policy_version": deidentify.POLICY_VERSION, "counts": {"visit": 7},
        "k_anonymity": {"k": 5}, "error": "the run failed (OSError)", "manifest": None,
    }  # fmt: skip
    manifest = {
        "policyVersion": deidentify.POLICY_VERSION, "keyVersion": "hmac-sha256:0123456789abcdef",
        "watermarks": {"0": "10:12:11", "1": "7:7:"}, "counts": {"participant": 1, "visit": 7},
        "leftOut": {"uncodedMedication": 3}, "kAnonymity": {"k": 5}, "recordsSha256": "ab" * 32,
        "recordsBytes": 1234,
    }  # fmt: skip
    done = run | {"status": "succeeded", "error": None, "manifest": manifest}
    assert Run.model_validate_json(encode(Run.from_row(done))).manifest.recordsBytes == 1234
    study = {"study_id": "diabetes-2026", "title": "t", "schedule": None, "k": 5,
             "created_by": "rita", "created_at": now}  # fmt: skip
    Run.model_validate_json(encode(Run.from_row(run)))
    Study.model_validate_json(encode(Study.of(study, 2, run, now)))
    consent = {"user_name": "alice.smith", "study_id": "diabetes-2026", "consented_at": now,
               "withdrawn_at": None, "version": 1}  # fmt: skip
    Consent.model_validate(orjson.loads(encode(Consent.from_row(consent))))


def test_consents_are_deleted_with_no_content(document: dict) -> None:
    consent = document["paths"]["/v1/users/{userName}/studies/{studyId}"]
    assert set(consent) == {"put", "delete"}
    assert "content" not in consent["delete"]["responses"]["204"]
    assert consent["put"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Consent"
    }


def test_a_repeated_audit_event_is_answered_like_the_first(document: dict) -> None:
    record = document["paths"]["/v1/audit/events"]["post"]["responses"]
    assert record["200"]["content"] == record["201"]["content"]
    assert {"Location", "X-Request-ID"} <= set(record["200"]["headers"])
    verdict = chain.Verdict(ok=False, checked=3, first_bad_seq=4, reason="altered", last_seq=3)
    ChainVerdict.model_validate_json(encode(verdict.model()))
    ChainVerdict.model_validate_json(encode(chain.Verdict(ok=True, checked=0).model()))


def test_a_stored_event_as_the_api_renders_it_is_an_event() -> None:
    pending = audit_store.Pending(
        event_id=uuid.uuid4(), entity_type="user", entity_id="alice.smith", action="create",
        actor="admin", occurred_at=dt.datetime.now(dt.UTC), source="user_service/shard-0",
        request_id=None, changes=["email"], before=None, after={"role": "patient"},
    )  # fmt: skip
    body = pending.body(1).decode()
    hashed = chain.chain_hash(chain.GENESIS, body.encode())
    stored = audit_store.Stored(1, body, chain.GENESIS, hashed)
    Event.model_validate_json(audit_routes._event_json(stored))


def test_query_parameters_state_their_bounds(document: dict) -> None:
    params = document["components"]["parameters"]
    assert params["limit"]["schema"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 200,
        "default": 50,
    }
    assert params["visitId"]["schema"]["format"] == "uuid"
    assert params["userName"]["schema"]["pattern"] == r"^[a-z0-9][a-z0-9._-]{2,63}$"
    assert params["since"]["schema"]["format"] == "date-time"
    # The audit filters fit nginx's 8 KiB request line even fully percent-encoded.
    assert params["entityType"]["schema"]["pattern"] == r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$"
    worst = sum(12 * params[p]["schema"]["maxLength"] for p in ("entityId", "actor"))
    assert worst + 64 + 1024 < 8190


def test_the_gateway_table_is_what_the_contracts_declare(document: dict) -> None:
    """The gateway's routing and coarse role check come from the committed document alone."""
    table = ApiTable.from_document(document)
    by_id = {op.operation_id: op for op in OPERATIONS}
    for endpoint in table.endpoints:
        ops = [o for o in OPERATIONS if (o.method, o.path) == (endpoint.method, endpoint.path)]
        assert len(ops) == 1
        op = ops[0]
        assert (endpoint.service, endpoint.roles, endpoint.cacheable) == (
            op.service, op.roles, op.cacheable,
        )  # fmt: skip
    assert table.user_subresources() == {"visits": "visit", "studies": "user"}
    assert set(table.service_roles("audit")) == {"admin", "auditor", "clinician"}
    assert set(table.service_roles("anonymizer")) == {"admin", "researcher"}
    assert {op for op, o in by_id.items() if o.cacheable} == {"getUser", "listVisits", "getVisit"}
    # What the gateway serves is what the committed file says.
    assert api_table() == table


def test_every_operation_is_served_by_a_named_service() -> None:
    services = {op.service for op in OPERATIONS}
    assert services == {"user", "visit", "anonymizer", "audit", "gateway"}
