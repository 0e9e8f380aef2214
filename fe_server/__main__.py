"""Run an FE server: ``python -m fe_server --shard 1 --services user,visit --port 9101``."""

from __future__ import annotations

import argparse

from fe_server.app import create_app
from shared.logs import setup_logging
from shared.runner import run_app
from shared.settings import FESettings, load
from shared.shardmap import load_shard_map


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shard", type=int, help="shard id (MEDSVC_SHARD)")
    parser.add_argument("--services", help="comma-separated services to host (MEDSVC_SERVICES)")
    parser.add_argument("--port", type=int, help="listen port (MEDSVC_PORT)")
    parser.add_argument("--host", help="listen address (MEDSVC_HOST)")
    args = parser.parse_args(argv)
    settings = load(
        FESettings, shard=args.shard, services=args.services, port=args.port, host=args.host
    )
    setup_logging(f"fe-shard-{settings.shard}", settings.log_level)
    app = create_app(settings, load_shard_map(settings.shard_map))
    run_app(app, settings.host, settings.port)


if __name__ == "__main__":
    main()
