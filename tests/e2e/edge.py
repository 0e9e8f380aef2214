"""Helpers for testing the edge: a raw HTTP client and an nginx with production's settings.

The raw client writes the request target exactly as given (no normalisation of ``..``,
``%2e`` or ``//``, unlike aiohttp's and most clients' URL handling), which is what a curious
user with ``curl --path-as-is`` or a socket does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from deploy.localstack import Stack
from deploy.localstack.nginx import DEFAULT_BURST, DEFAULT_RATE, NginxConfig, NginxServer
from deploy.localstack.ports import free_port


@dataclass
class RawReply:
    status: int
    headers: dict[str, list[str]]  # lower-case names
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


async def raw_request(
    url: str, method: str, target: str, *, headers: dict[str, str] | None = None,
    body: bytes = b"", ssl_context: ssl.SSLContext | None = None,
) -> RawReply:
    """Send ``method target HTTP/1.1`` to ``url``'s host and port as written; read the reply."""
    scheme, _, hostport = url.partition("://")
    host, _, port = hostport.partition(":")
    tls = ssl_context if scheme == "https" else None
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=tls, server_hostname="localhost" if tls else None)
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()
    try:
        raw = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    if "chunked" in (found.get("transfer-encoding") or [""])[0]:
        payload = _dechunk(payload)
    return RawReply(int(status_line.split()[1]), found, payload)


def tls_context(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.cert_path))


@contextlib.asynccontextmanager
async def production_nginx(
    stack: Stack, name: str, gateways: Sequence[str] | None = None
) -> AsyncIterator[NginxServer]:
    """An nginx over the stack's gateways with production's edge settings.

    What deploy/k8s renders for the pods: plain HTTP only redirects (308) to HTTPS, and the
    rate limit is the real one (DEFAULT_RATE, DEFAULT_BURST, also `make run`'s). Its logs go
    to the stack's log folder as ``<name>.*.log``.
    """
    https_port = free_port()
    server = NginxServer(NginxConfig(
        run_dir=stack.base_dir / name, logs_dir=stack.logs_dir, name=name,
        http_port=free_port(), https_port=https_port, ops_port=free_port(),
        cert=stack.cert_path, key=stack.key_path,
        gateways=list(gateways or stack.nginx.config.gateways),
        rate=DEFAULT_RATE, burst=DEFAULT_BURST,
        redirect_http=True, https_redirect_port=https_port,
    ))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
