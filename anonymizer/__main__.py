"""The anonymizer's processes::

    python -m anonymizer serve --port 8400      the studies API (runs execute in it)
    python -m anonymizer schedule [--port P]    run studies as their cron schedules fall due
    python -m anonymizer schedule --once        run the studies due now, then exit (CronJob)
    python -m anonymizer run STUDY              run one study now; print the run; exit 0 if it
                                                succeeded, 1 if it failed, 2 if one is running,
                                                3 if the study does not exist

Settings come from the environment (``MEDSVC_ANONYMIZER_DSN`` or ``MEDSVC_CENTRAL_DSN``,
``MEDSVC_PSEUDONYM_KEY``, ``MEDSVC_SHARD_MAP``, ...).
"""

from __future__ import annotations

import argparse
import sys

import orjson
import uvloop

from anonymizer.app import create_app, extractor_scope
from anonymizer.extract import begin_run, execute
from anonymizer.models import Run
from anonymizer.scheduler import tick
from anonymizer.settings import AnonymizerSettings
from shared.entity import encode
from shared.errors import Conflict, NotFound
from shared.logs import setup_logging
from shared.runner import run_app
from shared.settings import load
from shared.shardmap import load_shard_map


async def run_once(settings: AnonymizerSettings, study_id: str) -> int:
    """Run ``study_id`` now, print the run as JSON; the exit status (see the module doc)."""
    async with extractor_scope(settings, load_shard_map(settings.shard_map)) as ex:
        try:
            handle = await begin_run(ex, study_id, "cli", "cli")
        except NotFound as exc:
            print(exc.detail, file=sys.stderr)
            return 3
        except Conflict as exc:
            print(exc.detail, file=sys.stderr)
            return 2
        assert handle is not None
        row = await execute(handle)
        # The run as the API shows it (its one encoder), indented for a reader.
        shown = orjson.loads(encode(Run.from_row(row)))
        print(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())
        return 0 if row["status"] == "succeeded" else 1


async def tick_once(settings: AnonymizerSettings) -> int:
    """Run every study due now (one after another), print their run ids; 0."""
    async with extractor_scope(settings, load_shard_map(settings.shard_map)) as ex:
        for run_id in await tick(ex):
            print(run_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m anonymizer", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("serve", "the studies API"), ("schedule", "the cron scheduler")):
        p = sub.add_parser(name, help=what)
        p.add_argument("--port", type=int, help="listen port (MEDSVC_PORT): /healthz, /metrics")
        p.add_argument("--host", help="listen address (MEDSVC_HOST)")
        if name == "schedule":
            p.add_argument("--once", action="store_true", help="run what is due now, then exit")
    one = sub.add_parser("run", help="run one study now")
    one.add_argument("study", help="the studyId")
    args = parser.parse_args(argv)

    if args.command == "run" or getattr(args, "once", False):
        settings = load(AnonymizerSettings)
        setup_logging(f"anonymizer-{args.command}", settings.log_level)
        if args.command == "run":
            return uvloop.run(run_once(settings, args.study))
        return uvloop.run(tick_once(settings))
    settings = load(AnonymizerSettings, port=args.port, host=args.host)
    role = "api" if args.command == "serve" else "scheduler"
    setup_logging(f"anonymizer-{args.command}-{settings.port}", settings.log_level)
    app = create_app(settings, load_shard_map(settings.shard_map), role=role)
    run_app(app, settings.host, settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
