"""The extraction step of ``make bench``: a study run over 100,000 visits across the shards,
beside a raw ``COPY (SELECT …) TO STDOUT`` of the same rows as the ceiling (three interleaved
rounds, the median shown, every round's ratio kept in ``extra``); then a run of
1,000,000 visits downloaded through nginx (first byte, rate, each hop's memory growth)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anonymizer.bench import extraction_benchmark, streaming_benchmark
from anonymizer.settings import AnonymizerSettings
from bench.report import Measurement, Row
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
    result = await extraction_benchmark(settings, visits=VISITS)
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
