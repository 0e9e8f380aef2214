"""Run audit_service: ``python -m audit_service --port 8300``.

``MEDSVC_AUDIT_DSN`` names its database.

``python -m audit_service verify --checkpoints FILE --public-key PEM [--dsn DSN | --export FILE]``
checks the log offline (audit_service/offline.py).
"""

from __future__ import annotations

import argparse
import sys

from audit_service.app import create_app
from audit_service.settings import AuditSettings
from shared.logs import setup_logging
from shared.runner import run_app
from shared.settings import load


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["verify"]:
        from audit_service import offline

        sys.exit(offline.main(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, help="listen port (MEDSVC_PORT)")
    parser.add_argument("--host", help="listen address (MEDSVC_HOST)")
    args = parser.parse_args(argv)
    settings = load(AuditSettings, port=args.port, host=args.host)
    setup_logging(f"audit-{settings.port}", settings.log_level)
    run_app(create_app(settings), settings.host, settings.port)


if __name__ == "__main__":
    main()
