"""Where the server binaries live (Debian 12 paths, overridable for other layouts)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .procs import ProcessError

PG_BIN_DEFAULT = "/usr/lib/postgresql/15/bin"


def _find(name: str, *extra_dirs: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(extra_dirs))
    if not found:
        raise ProcessError(f"{name} not found (run `make deps` to install it)")
    return found


def pg_bin(tool: str) -> str:
    """Path of a PostgreSQL server tool (``initdb``, ``postgres``).

    ``MEDSVC_PG_BIN`` names the folder; by default Debian's PostgreSQL 15, which is not on
    ``PATH``.
    """
    folder = Path(os.environ.get("MEDSVC_PG_BIN", PG_BIN_DEFAULT))
    path = folder / tool
    if not path.exists():
        raise ProcessError(f"{path} not found (run `make deps` to install postgresql-15)")
    return str(path)


def nginx() -> str:
    """Path of the nginx binary (``/usr/sbin`` is not on a normal user's ``PATH``)."""
    return _find("nginx", "/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin")


def redis_server() -> str:
    """Path of ``redis-server``."""
    return _find("redis-server", "/usr/bin", "/usr/local/bin")


def openssl() -> str:
    """Path of the ``openssl`` command-line tool."""
    return _find("openssl", "/usr/bin")


def prometheus() -> str:
    """Path of the ``prometheus`` server (Debian's package)."""
    return _find("prometheus", "/usr/bin")


def promtool() -> str:
    """Path of ``promtool`` (checks configurations, unit-tests alert rules)."""
    return _find("promtool", "/usr/bin")
