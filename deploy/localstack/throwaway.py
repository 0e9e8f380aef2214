"""A whole stack on free ports in a fresh folder, for tests and benchmarks.

Started on entry; stopped on exit, even on failure, and its folder removed, unless ``keep()``
says otherwise at that moment (a failed test session) or ``MEDSVC_KEEP_E2E=1``: then the folder,
with every process's log, stays and its path is printed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from .nginx import UNTHROTTLED_BURST, UNTHROTTLED_RATE
from .stack import Stack, StackConfig


@contextlib.asynccontextmanager
async def throwaway_stack(
    prefix: str, *, keep: Callable[[], bool] = lambda: False, **config: Any
) -> AsyncIterator[Stack]:
    """A running :class:`Stack` configured by ``config`` (StackConfig fields)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)  # mkdtemp makes it 0700; PostgreSQL may run as another account
    # Every client of a throwaway stack is 127.0.0.1, so its nginx does not rate-limit; the
    # real limit (`make run`'s, production's) is tested on a second nginx (tests/e2e/edge.py).
    options: dict[str, Any] = {
        "http_port": 0, "https_port": 0, "rate": UNTHROTTLED_RATE, "burst": UNTHROTTLED_BURST,
        **config,
    }  # fmt: skip
    stack = Stack(StackConfig(base_dir=base, **options))
    try:
        await stack.start()
        yield stack
    finally:
        await stack.stop()
        if keep() or os.environ.get("MEDSVC_KEEP_E2E") == "1":
            print(f"\nstack folder kept (logs in {stack.logs_dir})")
        else:
            shutil.rmtree(base, ignore_errors=True)
