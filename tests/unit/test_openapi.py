"""The published contract: valid OpenAPI 3.1, listing exactly the routes the code serves."""

from __future__ import annotations

import re

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from openapi_spec_validator import validate

from gateway.app import create_app as create_gateway
from gateway.routes import not_found
from shared.fe_app import SERVICE_MODULES
from shared.fe_app import create_app as create_fe
from shared.openapi import build_document
from shared.operations import OPERATIONS, Operation
from shared.settings import FESettings, GatewaySettings
from shared.shardmap import Shard, ShardMap, even_ranges
from user_service.models import UserIn
from visit_service.models import VisitIn

OPERATION_IDS = {
    "createUser", "searchUsers", "getUser", "patchUser",
    "createVisit", "listVisits", "getVisit", "patchVisit", "getOpenApiDocument",
}  # fmt: skip


def shard_map() -> ShardMap:
    return ShardMap(shards=[Shard(id=i, buckets=r, postgres="postgresql://x@127.0.0.1:1/x")
                            for i, r in enumerate(even_ranges(2))])  # fmt: skip


def apps() -> list[web.Application]:
    """Every app that serves /v1, built by its factory (no I/O happens until startup)."""
    fe = create_fe(FESettings(shard=0, services=",".join(SERVICE_MODULES)), shard_map())
    return [fe, create_gateway(GatewaySettings(), shard_map())]


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
    path = op.path.format(userName="alice.smith", visitId="00000000-0000-4000-8000-000000000000")
    match = await gateway.router.resolve(make_mocked_request(op.method, path, app=gateway))
    assert match.http_exception is None
    assert match.handler is not not_found


def test_bodies_are_the_models_the_services_validate_with(document: dict) -> None:
    schemas = document["components"]["schemas"]
    for model in (UserIn, VisitIn):
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
    user_links = by_id["createUser"][1]["responses"]["201"]["links"]
    visit_links = by_id["createVisit"][1]["responses"]["201"]["links"]
    assert {"getUser", "patchUser", "createVisit"} <= {
        link["operationId"] for link in user_links.values()
    }
    assert {"getVisit", "patchVisit"} <= {link["operationId"] for link in visit_links.values()}
    for link in [*user_links.values(), *visit_links.values()]:
        path, _ = by_id[link["operationId"]]
        # Every path parameter of the target comes from the created resource's body.
        assert set(link["parameters"]) == set(re.findall(r"{(\w+)}", path))
        assert all(v.startswith("$response.body#/") for v in link["parameters"].values())


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
