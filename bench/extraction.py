"""The extraction step of ``make bench``: a study run over 100,000 visits across the shards,
beside a raw ``COPY (SELECT …) TO STDOUT`` of the same rows as the ceiling (three interleaved
rounds, the median shown, every round's ratio kept in ``extra``); then a run of
1,000,000 visits downloaded through nginx (first byte, rate, each hop's memory growth).

The runs and the COPYs are timed in a process of their own on uvloop (``python -m
anonymizer.bench``), as the anonymizer runs a study: its service and its CLI are on uvloop; the
benchmark's own event loop, busy with nothing else, is not what a run meets."""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any

import orjson

from anonymizer.bench import streaming_benchmark
from anonymizer.settings import AnonymizerSettings
from bench.report import Measurement, Row
from deploy.localstack.stack import REPO_ROOT
from shared.settings import load

if TYPE_CHECKING:
    from bench.runner import BenchContext

VISITS = 100_000
STREAMED_VISITS = 1_000_000


async def extraction(ctx: BenchContext) -> list[Row | Measurement]:
    settings = load(
        AnonymizerSettings,
        central_dsn=ctx.stack.central_dsn,
        shard_map=str(ctx.stack.shard_map_path),
    )
    result = await _extraction_benchmark(ctx)
    copy = Row(
        "extract_copy",
        f"raw COPY of the same {result['copyRows']:,} visit rows",
        rate=result["copyRowsPerSecond"],
        unit="rows/s",
        seconds=result["copySeconds"],
    )
    run = Row(
        "extract",
        f"extraction run ({result['visits']:,} visits, {result['participants']:,} participants)",
        rate=result["extractRowsPerSecond"],
        unit="rows/s",
        seconds=result["extractSeconds"],
        baseline="extract_copy",
        target=0.5,
        extra={"roundRatios": result["ratios"]},
    )
    hops = {"nginx": ctx.stack.nginx.pid, "anonymizer": ctx.stack.services["anonymizer"][0].pid}
    hops |= {f"gateway-{i}": g.pid for i, g in enumerate(ctx.stack.gateways)}
    streamed = await streaming_benchmark(
        settings, ctx.stack.base_url, ctx.token, hops, visits=STREAMED_VISITS
    )
    growth = max(streamed["rssGrowthKiB"].values())
    download = Row(
        "records_download",
        f"records download through nginx ({streamed['visits']:,} visits, "
        f"{streamed['bytes'] / 2**20:,.0f} MiB)",
        rate=streamed["downloadBytesPerSecond"] / 2**20,
        unit="MiB/s",
        seconds=streamed["downloadSeconds"],
        extra={
            "firstByteSeconds": streamed["firstByteSeconds"],
            "rssGrowthKiB": streamed["rssGrowthKiB"],
            "runSeconds": streamed["runSeconds"],
        },
    )
    return [
        copy,
        run,
        download,
        Measurement(
            "records_first_byte",
            streamed["firstByteSeconds"],
            "s",
            "records download of 1,000,000 visits through nginx",
        ),
        Measurement(
            "records_max_hop_rss_growth",
            growth / 1024,
            "MiB",
            "largest RSS growth of nginx, a gateway or the anonymizer during it",
        ),
    ]


async def _extraction_benchmark(ctx: BenchContext) -> dict[str, Any]:
    """:func:`anonymizer.bench.extraction_benchmark` in its own process (see the module)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "anonymizer.bench", str(VISITS), cwd=REPO_ROOT,
        env=ctx.stack.python_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the extraction benchmark failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = orjson.loads(out)
    return result
