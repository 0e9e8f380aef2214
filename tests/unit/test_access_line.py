"""The access line is the same JSON object the log formatter makes, and none is lost.

Run in a child process so that its real stderr (fd 2) is what the test reads.
"""

from __future__ import annotations

import subprocess
import sys

import orjson

_CHILD = """
import asyncio, logging
from shared.logs import ACCESS, request_id_var, setup_logging
setup_logging("probe")

async def main():
    for i in range(3):
        request_id_var.set(f"rid-{i}")
        ACCESS.write({"action": "http.request", "method": "GET", "route": "/v1/x",
                      "status": 200, "durationMs": 1.5, "shard": i})
    logging.getLogger("medsvc.access").info("request", extra={"action": "http.request",
        "method": "GET", "route": "/v1/x", "status": 200, "durationMs": 1.5, "shard": 0})
    request_id_var.set("rid-last")
    ACCESS.write({"action": "http.request", "method": "POST", "route": "/v1/y",
                  "status": 201, "durationMs": 2, "shard": 1})

asyncio.run(main())
"""


def _lines() -> list[dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, check=True, timeout=60
    )
    return [orjson.loads(line) for line in done.stderr.splitlines() if line.strip()]


def test_access_lines_match_the_formatter_and_all_reach_stderr() -> None:
    lines = _lines()
    access = [r for r in lines if r["action"] == "http.request"]
    # Every line written, the one of the last loop turn included (flushed at exit).
    assert sorted(r["requestId"] for r in access) == [
        "rid-0",
        "rid-1",
        "rid-2",
        "rid-2",
        "rid-last",
    ]
    via_formatter = next(r for r in access if r["requestId"] == "rid-2" and r["shard"] == 0)
    direct = next(r for r in access if r["requestId"] == "rid-2" and r["shard"] == 2)
    # The same fields, in the same order, as a line made through logging and JsonFormatter.
    assert list(direct) == list(via_formatter)
    assert direct["logger"] == "medsvc.access" and direct["level"] == "info"
    assert direct["process"] == "probe" and direct["msg"] == "request"
    ts = str(direct["ts"])
    assert len(ts) == len("2026-12-01T15:00:00.000Z") and ts.endswith("Z")
