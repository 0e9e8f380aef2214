"""A self-signed TLS certificate for ``localhost`` / ``127.0.0.1``, made with openssl."""

from __future__ import annotations

import asyncio
from pathlib import Path

from . import binaries
from .procs import ProcessError

# Remake the certificate when it expires within this many seconds.
_MIN_VALIDITY = 7 * 24 * 3600


async def _openssl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        binaries.openssl(),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode("utf-8", "replace")


async def ensure_cert(folder: Path) -> tuple[Path, Path]:
    """Return ``(cert, key)`` in ``folder``, generating them unless a valid pair is there."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "localhost.crt", folder / "localhost.key"
    if cert.exists() and key.exists():
        code, _ = await _openssl(
            "x509", "-in", str(cert), "-noout", "-checkend", str(_MIN_VALIDITY)
        )
        if code == 0:
            return cert, key
    code, out = await _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    if code != 0:
        raise ProcessError(f"openssl could not make a certificate:\n{out}")
    key.chmod(0o600)
    return cert, key
