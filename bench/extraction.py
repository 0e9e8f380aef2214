"""The extraction step of ``make bench``: a study run over 100,000 visits across the shards,
beside a raw ``COPY (SELECT …) TO STDOUT`` of the same rows as the ceiling."""

from __future__ import annotations

from typing import TYPE_CHECKING

from anonymizer.bench import extraction_benchmark
from anonymizer.settings import AnonymizerSettings
from bench.report import Measurement, Row
from shared.settings import load

if TYPE_CHECKING:
    from bench.runner import BenchContext

VISITS = 100_000


async def extraction(ctx: BenchContext) -> list[Row | Measurement]:
    settings = load(
        AnonymizerSettings, central_dsn=ctx.stack.central_dsn, shard_map=str(ctx.stack.shard_map_path)
    )
    result = await extraction_benchmark(settings, visits=VISITS)
    copy = Row("extract_copy", f"raw COPY of the same {result['copyRows']:,} visit rows",
               rate=result["copyRowsPerSecond"], unit="rows/s", seconds=result["copySeconds"])
    run = Row("extract", f"extraction run ({result['visits']:,} visits, {result['participants']:,} participants)",
              rate=result["extractRowsPerSecond"], unit="rows/s", seconds=result["extractSeconds"],
              baseline="extract_copy", target=0.5)
    return [copy, run]
