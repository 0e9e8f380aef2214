"""The real stack for the end-to-end tests: started once per session, stopped at the end.

2 shards × 2 FE servers, 2 gateways and nginx, with real PostgreSQL and Redis, all on free
ports of 127.0.0.1, in a fresh folder under the system temp dir. PostgreSQL runs fast and
unsafe (fsync off). The folder (data and every process's log) is removed after a green run
and kept, with its path printed, after a failure or when ``MEDSVC_KEEP_E2E=1``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from deploy.localstack import Stack, StackConfig
from deploy.localstack.nginx import UNTHROTTLED_BURST, UNTHROTTLED_RATE


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stack(request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """The running stack; stopped (every process) at the end of the session, even on failure."""
    # mkdtemp makes the folder 0700; PostgreSQL may run as another user and must get in.
    base = Path(tempfile.mkdtemp(prefix="medsvc-e2e-"))
    base.chmod(0o755)
    # Every test's client is 127.0.0.1, so this stack's nginx does not rate-limit; the
    # real limit (`make run`'s, production's) is tested on a second nginx (tests/e2e/edge.py).
    st = Stack(StackConfig(base_dir=base, http_port=0, https_port=0, fast=True,
                           rate=UNTHROTTLED_RATE, burst=UNTHROTTLED_BURST))
    try:
        await st.start()
        yield st
    finally:
        await st.stop()
        keep = request.session.testsfailed or os.environ.get("MEDSVC_KEEP_E2E") == "1"
        if keep:
            print(f"\ne2e stack folder kept (logs in {st.logs_dir})")
        else:
            shutil.rmtree(base, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session, closed after the test."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="session")
def admin_token(stack: Stack) -> str:
    """A token for ``admin`` with the role ``admin``."""
    return stack.token("admin", ["admin"])


@pytest.fixture(scope="session")
def token(stack: Stack) -> Callable[[str, str], str]:
    """``token(sub, role)`` → a bearer token for ``sub`` with that one role."""

    def make(sub: str, role: str) -> str:
        return stack.token(sub, [role])

    return make
