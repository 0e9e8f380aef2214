"""Run a gateway: ``python -m gateway --port 8100``."""

from __future__ import annotations

import argparse

from gateway.app import create_app
from shared.logs import setup_logging
from shared.runner import run_app
from shared.settings import GatewaySettings, load
from shared.shardmap import load_shard_map


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, help="listen port (MEDSVC_PORT)")
    parser.add_argument("--host", help="listen address (MEDSVC_HOST)")
    args = parser.parse_args(argv)
    settings = load(GatewaySettings, port=args.port, host=args.host)
    setup_logging(f"gateway-{settings.port}", settings.log_level)
    run_app(create_app(settings, load_shard_map(settings.shard_map)), settings.host, settings.port)


if __name__ == "__main__":
    main()
