"""Watching the running stack as an operator does: metrics from every process, one request
followed through every hop's log by its id, and no patient data in any log line.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from deploy.localstack import Stack
from deploy.localstack.nginx import DEFAULT_BURST
from deploy.localstack.ports import free_port
from deploy.localstack.service import ServiceProcess
from tests.e2e.api import Api, unique
from tests.e2e.edge import production_nginx, tls_context

pytestmark = pytest.mark.timeout(120)

OPS_ROUTES = ("/healthz", "/readyz", "/metrics")
HTTP_FAMILIES = {"medsvc_http_requests_total", "medsvc_http_request_duration_seconds"}
POOL_FAMILIES = {"medsvc_db_pool_connections", "medsvc_db_pool_max_connections"}
# The families each kind of process must export (API.md "Operations", issue 6).
FAMILIES = {
    "fe": HTTP_FAMILIES
    | POOL_FAMILIES
    | {
        "medsvc_cache_events_total",
        "medsvc_audit_outbox_backlog",
        "medsvc_audit_outbox_oldest_age_seconds",
    },
    "gateway": HTTP_FAMILIES
    | {"medsvc_gateway_upstream_requests_total", "medsvc_gateway_upstream_duration_seconds"},
    "audit": HTTP_FAMILIES | POOL_FAMILIES | {"medsvc_audit_events_appended_total"},
    "anonymizer": HTTP_FAMILIES
    | POOL_FAMILIES
    | {
        "medsvc_anonymizer_rows_extracted_total",
        "medsvc_anonymizer_last_success_timestamp_seconds",
    },
}


def auth(token: str, rid: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if rid:
        headers["X-Request-ID"] = rid
    return headers


async def scrape(http: aiohttp.ClientSession, proc: ServiceProcess) -> str:
    async with http.get(f"{proc.url}/metrics") as resp:
        assert resp.status == 200, proc.name
        assert resp.headers["Content-Type"].startswith("text/plain"), proc.name
        return await resp.text()


def families(text: str) -> set[str]:
    """The metric families a scrape declares (``# TYPE name kind``), counters with ``_total``."""
    out = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        out.add(name + "_total" if kind == "counter" and not name.endswith("_total") else name)
    return out


def samples(text: str, name: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]


def kind_of(name: str) -> str:
    """The FAMILIES key of a central service (``audit``, ``anonymizer-scheduler``)."""
    return "anonymizer" if name.startswith("anonymizer") else name


async def test_every_process_exports_its_metric_families(
    stack: Stack, http: aiohttp.ClientSession, admin_token: str
) -> None:
    # Given traffic through nginx, and directly through each gateway
    api = Api(http, stack.base_url, admin_token)
    patient = await api.create_patient(unique("metrics"))
    name = patient["userName"]
    shard = stack.shard_map.shard_id_for(name)
    for _ in range(3):
        assert (await api.call("GET", f"/v1/users/{name}")).status == 200
    for gw in stack.gateways:
        async with http.get(f"{gw.url}/v1/users/{name}", headers=auth(admin_token)) as resp:
            assert resp.status == 200

    # When I scrape every process of the stack
    processes: list[tuple[str, ServiceProcess]] = [("gateway", g) for g in stack.gateways]
    processes += [("fe", fe) for fes in stack.fe.values() for fe in fes]
    for svc, procs in stack.services.items():
        assert kind_of(svc) in FAMILIES, f"no expected metric families for {svc}"
        processes += [(kind_of(svc), p) for p in procs]
    # The components the issue names are all in the stack: none may be skipped.
    assert {kind for kind, _ in processes} == set(FAMILIES)
    scraped = {p.name: (kind, await scrape(http, p)) for kind, p in processes}

    # Then each finds its families, with labels that are bounded (no userName anywhere)
    for proc_name, (kind, text) in scraped.items():
        missing = FAMILIES[kind] - families(text)
        assert not missing, f"{proc_name} lacks {sorted(missing)}"
        assert name not in text, f"{proc_name} puts a userName in a label"
        assert samples(text, "medsvc_http_requests_total"), proc_name
        assert not re.search(r'route="/v1/users/[^{]', text), f"{proc_name}: raw path as label"
    for i, fes in stack.fe.items():
        for fe in fes:
            text = scraped[fe.name][1]
            pool = [
                s
                for s in samples(text, "medsvc_db_pool_max_connections")
                if f'pool="shard-{i}"' in s
            ]
            assert pool, f"{fe.name} reports no pool use for shard {i}"
            assert samples(text, "medsvc_audit_outbox_backlog"), fe.name
    # The requests for the user show in the owning shard's figures at every gateway...
    for gw in stack.gateways:
        text = scraped[gw.name][1]
        assert any(
            f'shard="{shard}"' in s for s in samples(text, "medsvc_gateway_upstream_requests_total")
        ), gw.name
        assert samples(text, "medsvc_gateway_upstream_duration_seconds_bucket"), gw.name
    # ...and its reads in that shard's cache figures.
    cache = [
        s
        for fe in stack.fe[shard]
        for s in samples(scraped[fe.name][1], "medsvc_cache_events_total")
    ]
    assert any('event="hit"' in s for s in cache) and any('event="miss"' in s for s in cache)


# -- logs --------------------------------------------------------------------------------


def json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


async def lines_with_id(
    stack: Stack, rid: str, want: dict[str, int]
) -> dict[str, list[dict[str, Any]]]:
    """Per log file, the JSON lines carrying ``rid``; waits for nginx's buffered access log."""
    deadline = time.monotonic() + 10
    while True:
        found: dict[str, list[dict[str, Any]]] = {}
        for path in sorted(stack.logs_dir.glob("*.log")):
            if path.name.startswith(("postgres-", "redis-")):
                continue
            hits = [r for r in json_lines(path) if r.get("requestId") == rid]
            if hits:
                found[path.name] = hits
        counts = {
            prefix: sum(len(v) for k, v in found.items() if k.startswith(prefix)) for prefix in want
        }
        if all(counts[p] >= n for p, n in want.items()) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.25)


async def test_one_request_is_followed_through_nginx_gateway_and_fe_server_logs(
    stack: Stack, http: aiohttp.ClientSession, admin_token: str
) -> None:
    # Given a patient, and a request id of my own
    api = Api(http, stack.base_url, admin_token)
    name = (await api.create_patient(unique("trace")))["userName"]
    shard = stack.shard_map.shard_id_for(name)
    rid = f"trace-{uuid.uuid4().hex}"

    # When I read the patient through nginx with that id
    async with http.get(
        f"{stack.base_url}/v1/users/{name}", headers=auth(admin_token, rid)
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-ID"] == rid

    # Then nginx, one gateway and one FE server of the owning shard each log it once
    found = await lines_with_id(stack, rid, {"nginx": 1, "gateway-": 1, f"fe-shard-{shard}-": 1})
    nginx = [r for k, v in found.items() if k.startswith("nginx") for r in v]
    gateways = [r for k, v in found.items() if k.startswith("gateway-") for r in v]
    fes = [r for k, v in found.items() if k.startswith("fe-shard-") for r in v]
    assert set(found) <= {
        *(k for k in found if k.startswith(("nginx", "gateway-", f"fe-shard-{shard}-")))
    }, found.keys()
    assert len(nginx) == 1, found
    assert nginx[0]["method"] == "GET" and nginx[0]["status"] == 200
    assert nginx[0]["uri"] == f"/v1/users/{name}"
    for hop, lines in (("gateway", gateways), ("FE server", fes)):
        access = [r for r in lines if r.get("action") == "http.request"]
        assert len(access) == 1, (hop, lines)
        line = access[0]
        assert line["method"] == "GET" and line["status"] == 200, line
        assert line["route"] == "/v1/users/{userName}", line
        assert line["shard"] == shard, line
        assert isinstance(line["durationMs"], float | int), line
        assert line["level"] and line["ts"] and line["process"], line
    # The FE server that answered is one of the owning shard's.
    fe_files = [k for k in found if k.startswith("fe-shard-")]
    assert fe_files and all(k.startswith(f"fe-shard-{shard}-") for k in fe_files)


async def test_no_patient_data_reaches_any_log(
    stack: Stack, http: aiohttp.ClientSession, admin_token: str
) -> None:
    # Given a patient whose every personal field is a string found nowhere else
    mark = uuid.uuid4().hex[:10]
    phi = {
        "givenName": f"Zelphine{mark}",
        "familyName": f"Quarrington{mark}",
        "birthDate": "1917-03-29",
        "street": f"742 Evergreen{mark} Terrace",
        "city": f"Springfield{mark}",
        "newStreet": f"1 Moved{mark} Lane",
        "notes": f"Complains of recurring {mark} migraine",
        "reason": f"Headache{mark}",
    }
    api = Api(http, stack.base_url, admin_token)
    name = unique("phi")
    await api.create_patient(
        name,
        givenName=phi["givenName"],
        familyName=phi["familyName"],
        birthDate=phi["birthDate"],
        email=f"z{mark}@example.org",
        address={"line": phi["street"], "city": phi["city"], "country": "US"},
    )
    # When it is read, searched by name, changed, visited, and sent back wrong
    assert (await api.call("GET", f"/v1/users/{name}")).status == 200
    search = await api.call("GET", "/v1/users", params={"familyName": phi["familyName"]})
    assert search.status == 200 and search.body["items"], search.body
    patch = await api.call(
        "PATCH",
        f"/v1/users/{name}",
        {"address": {"line": phi["newStreet"]}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patch.status == 200, patch.body
    visit = await api.create_visit(name, notes=phi["notes"], reason=phi["reason"])
    assert (await api.call("GET", f"/v1/users/{name}/visits/{visit['visitId']}")).status == 200
    bad = await api.call(
        "POST",
        "/v1/users",
        {
            "userName": unique("phi"),
            "role": "patient",
            "givenName": phi["givenName"],
            "familyName": phi["familyName"],
            "birthDate": f"not-a-date-{mark}",
        },
    )
    assert bad.status == 422
    dup = await api.call(
        "POST",
        "/v1/users",
        {
            "userName": name,
            "role": "patient",
            "givenName": phi["givenName"],
            "familyName": phi["familyName"],
            "birthDate": phi["birthDate"],
        },
    )
    assert dup.status == 409
    # and on the paths where errors and warnings are logged: with the patient's name in the
    # query string and the body, a request too large (413), through an nginx whose first
    # gateway is down (an upstream failure) and hammered past its real rate limit (429),
    # and a search while one FE server of a shard is down.
    await provoke_errors_with(stack, http, admin_token, phi["familyName"], mark)
    # (nginx flushes its access log each second; the audit relay ships within a few)
    await asyncio.sleep(2.5)

    # Then no line of any log under the stack's folder holds any of it
    leaks = []
    files = sorted(
        {
            *(p for p in stack.logs_dir.rglob("*") if p.is_file()),
            *(p for p in stack.base_dir.rglob("*.log") if p.is_file()),
        }
    )
    assert any(p.name.startswith("nginx") for p in files) and len(files) > 5, files
    needles = [v for k, v in phi.items() if k != "birthDate"] + [mark, phi["birthDate"]]
    for path in files:
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for needle in needles:
                if needle in line:
                    leaks.append(f"{path.name}:{n}: {needle!r} in {line[:300]}")
    assert not leaks, "\n".join(leaks[:20])


async def provoke_errors_with(
    stack: Stack, http: aiohttp.ClientSession, admin_token: str, family_name: str, mark: str
) -> None:
    """Drive the error and warning paths of every hop with PHI in the query and the body."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    query = {"familyName": family_name}
    big = orjson.dumps(
        {"userName": unique("phi"), "familyName": family_name, "notes": f"{mark} " * 200_000}
    )
    assert len(big) > 1024 * 1024
    async with http.post(
        f"{stack.base_url}/v1/users",
        params=query,
        data=big,
        headers={**headers, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
    # An nginx with production's settings whose first gateway does not answer.
    dead = f"127.0.0.1:{free_port()}"
    async with production_nginx(stack, "nginx-phi", [dead, *stack.nginx.config.gateways]) as edge:
        connector = aiohttp.TCPConnector(limit=50, ssl=tls_context(stack))
        async with aiohttp.ClientSession(connector=connector) as client:
            url = f"{edge.https_url}/v1/users"
            async with client.get(url, params=query, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
            async with client.post(url, params=query, data=big, headers=headers) as resp:
                assert resp.status == 413

            async def one() -> int:
                async with client.get(url, params=query, headers=headers) as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(one() for _ in range(3 * DEFAULT_BURST)))
            assert 429 in statuses and set(statuses) <= {200, 429}, sorted(set(statuses))
    # One FE server of shard 0 down while its shard is searched: the gateway fails over.
    victim = stack.fe[0][-1]
    await victim.stop()
    try:
        for _ in range(3):
            async with http.get(
                f"{stack.base_url}/v1/users", params=query, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()
    finally:
        await victim.start()
