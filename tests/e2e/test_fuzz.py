"""The published contract, as a client meets it through nginx, and the API fuzzed against it.

Given the running stack, a client fetches ``/v1/openapi.json`` and the ``/docs`` reference
with no token and no network beyond the stack; then schemathesis, reading that same document,
throws generated requests at every operation: all its checks (no 5xx, status codes, content
types, headers and bodies as documented, invalid data refused, valid data accepted, undeclared
methods answered 405, no token or a bad token answered 401), the stateful phase that follows
the document's links (a created user, visit, study, run or audit event is readable at once),
and ``tests/e2e/fuzz_hooks.py``'s checks: no outsider role reads what the admin read, and a
run's NDJSON download is made of the records the document describes.

``make test`` runs a bounded pass (few examples per operation, a fixed seed); ``make fuzz``
sets ``MEDSVC_FUZZ_EXAMPLES`` (200) for the deep one.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlparse

import aiohttp
import pytest

from apidoc.openapi import build_document
from apidoc.operations import OPERATIONS
from deploy.localstack import Stack
from tests.e2e.fuzz_hooks import ROLES

EXAMPLES = int(os.environ.get("MEDSVC_FUZZ_EXAMPLES", "20"))
SEED = int(os.environ.get("MEDSVC_FUZZ_SEED", "20261125"))
WORKERS = os.environ.get("MEDSVC_FUZZ_WORKERS", "2")
FUZZ_TIMEOUT = int(os.environ.get("MEDSVC_FUZZ_TIMEOUT", "900"))
REPO = Path(__file__).resolve().parents[2]


class _Assets(HTMLParser):
    """The scripts and stylesheets a page references."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"] or "")
        if tag == "link" and "stylesheet" in (a.get("rel") or "").split() and a.get("href"):
            self.styles.append(a["href"] or "")


async def test_the_contract_is_served_through_nginx_without_a_token(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.base_url}/v1/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.headers.get("X-Request-ID")
        document = await resp.json()
    assert document == json.loads(json.dumps(build_document()))
    assert document["openapi"].startswith("3.1")
    listed = {
        op["operationId"] for methods in document["paths"].values() for op in methods.values()
    }
    assert listed == {op.operation_id for op in OPERATIONS}


async def test_the_reference_page_loads_every_script_and_style_from_the_stack(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    page_url = f"{stack.base_url}/docs"
    async with http.get(page_url) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    assets = _Assets()
    assets.feed(page)
    assert assets.scripts and assets.styles
    for ref in assets.scripts + assets.styles:
        url = urljoin(page_url, ref)
        # Nothing from a CDN: the page must work with no network beyond the stack.
        assert urlparse(url).netloc == urlparse(stack.base_url).netloc, ref
        async with http.get(url) as resp:
            assert resp.status == 200, ref
            body = await resp.read()
            assert body, ref
            expected = "text/javascript" if ref in assets.scripts else "text/css"
            assert resp.content_type == expected, ref
        if ref.endswith("init.js"):
            assert b"/v1/openapi.json" in body


async def test_an_unknown_asset_is_a_problem_not_a_page(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.base_url}/docs/assets/../../etc/passwd") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
    async with http.get(f"{stack.base_url}/docs/assets/index.html") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"


@pytest.mark.timeout(FUZZ_TIMEOUT)
async def test_schemathesis_finds_nothing_wrong(stack: Stack, tmp_path: Path) -> None:
    tokens = {role: stack.token(f"fuzz-outsider-{role}", [role]) for role in ROLES}
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.e2e.fuzz_hooks",
        "MEDSVC_FUZZ_TOKENS": json.dumps(tokens),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{stack.base_url}/v1/openapi.json",
        "--header", f"Authorization: Bearer {stack.token('fuzz-admin', ['admin'])}",
        "--checks", "all",
        "--max-examples", str(EXAMPLES),
        "--seed", str(SEED),
        "--workers", WORKERS,
        "--generation-database", "none",
        "--request-timeout", "30",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
        "--no-color",
    ]  # fmt: skip
    # Run from the test's folder: schemathesis keeps a cache of past failures in its cwd.
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    text = output.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    print(text[-3000:])
    assert proc.returncode == 0, f"schemathesis found failures (seed {SEED}):\n{text[-20000:]}"
