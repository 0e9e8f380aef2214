"""nginx in front of the gateways, from the template ``deploy/nginx/nginx.conf.j2``."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import jinja2

from shared.logs import REQUEST_ID_PATTERN
from shared.paths import public_regex, refused_regex
from shared.settings import GatewaySettings

from . import binaries
from .procs import ManagedProcess, ProcessError, poll

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "nginx"
TEMPLATE_NAME = "nginx.conf.j2"

# The rate limit per client address (requests a second, and the burst answered at once):
# a real one, the same as in the Kubernetes manifests. Every client of `make run` on one
# machine is one address.
DEFAULT_RATE = 100
DEFAULT_BURST = 200
# For load that comes from one address on purpose: `make bench` and the e2e test stack.
UNTHROTTLED_RATE = 20000
UNTHROTTLED_BURST = 20000
# TLS 1.2 suites: ECDHE key exchange and AEAD ciphers only (Mozilla's "intermediate" list).
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# What one gateway admits at once (shared/settings.py, shared/admission.py). nginx sheds
# past two thirds of the sum over the gateways: round-robin does not split the requests in
# flight evenly, and a gateway sent a little more than its share must still admit it.
GATEWAY_IN_FLIGHT = GatewaySettings.model_fields["max_in_flight"].default
GATEWAY_IN_FLIGHT_CACHED = GatewaySettings.model_fields["max_in_flight_cached"].default


def gateway_bounds(env: Mapping[str, str]) -> dict[str, int]:
    """What one gateway started with ``env`` admits, as NginxConfig's keyword arguments.

    The gateways read MEDSVC_MAX_IN_FLIGHT and MEDSVC_MAX_IN_FLIGHT_CACHED (shared/settings.py);
    nginx's edge bounds must follow what they will really admit, not the defaults.
    """
    return {
        "gateway_in_flight": int(env.get("MEDSVC_MAX_IN_FLIGHT", GATEWAY_IN_FLIGHT)),
        "gateway_in_flight_cached": int(
            env.get("MEDSVC_MAX_IN_FLIGHT_CACHED", GATEWAY_IN_FLIGHT_CACHED)
        ),
    }


@dataclass(frozen=True)
class ProblemPage:
    """An error nginx answers itself, as an RFC 9457 problem document."""

    status: int
    title: str
    detail: str
    triggers: tuple[int, ...] = ()
    retry_after: int | None = None
    allow: str | None = None


# 494 (header too large) and 497 (plain HTTP to the TLS port) are nginx's internal codes.
PROBLEM_PAGES = (
    ProblemPage(400, "Bad Request", "malformed request", (400, 497)),
    ProblemPage(413, "Content Too Large", "request body over 1 MiB", (413,)),
    # nginx itself refuses TRACE (and unknown methods) before any location: answer with a
    # problem and an Allow header, like the gateway's 405s.
    ProblemPage(
        405,
        "Method Not Allowed",
        "method not allowed",
        (405,),
        allow="GET, POST, PUT, PATCH, DELETE",
    ),
    # Only nginx's own locations (the problem pages, asked for from outside) are its 404s.
    ProblemPage(404, "Not Found", "no resource at this path", (404,)),
    ProblemPage(414, "URI Too Long", "request URI too long", (414,)),
    ProblemPage(429, "Too Many Requests", "rate limit exceeded", (429,), retry_after=1),
    ProblemPage(431, "Request Header Fields Too Large", "request headers too large", (494,)),
    ProblemPage(500, "Internal Server Error", "load balancer error", (500,)),
    ProblemPage(502, "Bad Gateway", "no gateway answered", (502,), retry_after=2),
    # nginx's own 503s are its sheds at the edge (limit_conn in nginx.conf.j2): refused
    # before reaching a gateway, so certainly not applied.
    ProblemPage(
        503,
        "Service Unavailable",
        "at capacity: the request was not started and not applied; retry after Retry-After",
        (503,),
        retry_after=1,
    ),
    ProblemPage(
        504, "Gateway Timeout", "the gateway did not answer in time", (504,), retry_after=2
    ),
)


@dataclass
class NginxConfig:
    """What the template needs; ``render`` turns it into nginx.conf text."""

    run_dir: Path
    http_port: int
    https_port: int
    # nginx's own /healthz (never on the door's ports).
    ops_port: int
    cert: Path
    key: Path
    gateways: Sequence[str]
    rate: int = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    # Requests one gateway admits (all, and those that are not cacheable GETs); the edge
    # bounds, connection limits and pool sizes follow from them and the number of gateways.
    gateway_in_flight: int = GATEWAY_IN_FLIGHT
    gateway_in_flight_cached: int = GATEWAY_IN_FLIGHT_CACHED
    # The gateway processes behind ``gateways`` (default: one per entry; in a cluster the one
    # entry is the gateway Service, with its replicas behind it), and the nginx instances that
    # share them (each takes an equal part of the edge bounds).
    gateway_processes: int | None = None
    nginx_instances: int = 1
    worker_processes: int | str = 1
    # Log files are <logs_dir>/<name>.access.log and <name>.error.log.
    name: str = "nginx"
    logs_dir: Path | None = None
    # nginx only takes "user" when it starts as root; the workers then stay root so that
    # they can use the run folder, which belongs to whoever runs the stack.
    user: str | None = field(default_factory=lambda: "root" if os.geteuid() == 0 else None)
    # "127.0.0.1:" locally; "" (every address) in a pod.
    listen_host: str = "127.0.0.1:"
    # Production: plain HTTP answers only 308 to HTTPS, on this port (None: 443, the default).
    redirect_http: bool = False
    https_redirect_port: int | None = None
    # Log targets; default <logs_dir>/<name>.error.log and <name>.access.log (buffered).
    error_log: str | None = None
    access_log: str | None = None

    @property
    def logs(self) -> Path:
        return self.logs_dir or self.run_dir / "logs"

    def edge_bounds(self) -> dict[str, int]:
        """Requests in flight nginx lets through, and its connections to the gateways.

        In flight: two thirds of what the gateways admit together (the rest absorbs an
        uneven split), shared equally by the nginx instances in front of them. Connections:
        one per request in flight, all to one gateway when the other is down (then its own
        bound sheds the excess), all kept open in the idle pool.
        """
        n = self.gateway_processes or len(self.gateways)

        def share(per_gateway: int) -> int:
            return max(1, n * per_gateway * 2 // 3 // self.nginx_instances)

        edge = share(max(self.gateway_in_flight, self.gateway_in_flight_cached))
        return {
            "edge_in_flight": edge,
            "edge_in_flight_uncached": share(self.gateway_in_flight),
            "upstream_max_conns": edge,
            # Every connection max_conns allows to every server: an idle pool smaller than
            # that closes connections to one gateway while it opens new ones to the other
            # (measured at 500 clients with a pool of one edge bound for two gateways: every
            # connection to the gateways replaced within 2 s, some 400 new a second).
            "upstream_keepalive": edge * len(self.gateways),
        }

    def render(self) -> str:
        """Return the nginx.conf text."""
        if not self.gateways:
            raise ValueError("nginx needs at least one gateway")
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,  # noqa: S701 - nginx config, not HTML
        )
        suffix = f":{self.https_redirect_port}" if self.https_redirect_port else ""
        return env.get_template(TEMPLATE_NAME).render(
            run_dir=self.run_dir,
            error_log=self.error_log or f"{self.logs}/{self.name}.error.log",
            access_log=self.access_log
            or f"{self.logs}/{self.name}.access.log json buffer=64k flush=1s",
            listen_host=self.listen_host,
            http_port=self.http_port,
            https_port=self.https_port,
            ops_port=self.ops_port,
            redirect_http=self.redirect_http,
            https_redirect_suffix=suffix,
            cert=self.cert,
            key=self.key,
            ciphers=CIPHERS,
            request_id_pattern=REQUEST_ID_PATTERN,
            refused_path_regex=_nginx_string(refused_regex(r"\?|$")),
            public_path_regex=_nginx_string(public_regex(r"\?|$")),
            gateways=list(self.gateways),
            rate=self.rate,
            burst=self.burst,
            **self.edge_bounds(),
            worker_processes=self.worker_processes,
            user=self.user,
            errors=PROBLEM_PAGES,
        )


def _nginx_string(regex: str) -> str:
    """``regex`` for a quoted nginx string: nginx reads a doubled backslash there as one."""
    return regex.replace("\\\\", "\\\\\\\\")


class NginxServer(ManagedProcess):
    """nginx in the foreground (``daemon off``), with every file under ``config.run_dir``."""

    def __init__(self, config: NginxConfig) -> None:
        self.config = config
        self.run_dir = config.run_dir
        self.logs_dir = config.logs_dir or config.run_dir / "logs"
        self.conf_path = config.run_dir / "nginx.conf"
        # -e: errors before the config is read go to our log, not /var/log/nginx.
        argv = [
            binaries.nginx(), "-p", str(self.run_dir), "-c", str(self.conf_path),
            "-e", str(self.logs_dir / f"{config.name}.error.log"), "-g", "daemon off;",
        ]  # fmt: skip
        # SIGTERM is a fast shutdown in which the master also stops its workers; the kernel
        # sends it if the supervisor dies (a SIGKILL'd master would leave its workers behind).
        super().__init__(
            config.name, argv, self.logs_dir / f"{config.name}.log",
            cwd=config.run_dir, stop_signal=signal.SIGTERM, death_signal=signal.SIGTERM,
        )  # fmt: skip

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<http_port>``."""
        return f"http://127.0.0.1:{self.config.http_port}"

    @property
    def https_url(self) -> str:
        """``https://127.0.0.1:<https_port>``."""
        return f"https://127.0.0.1:{self.config.https_port}"

    @property
    def ops_url(self) -> str:
        """``http://127.0.0.1:<ops_port>``: nginx's own /healthz."""
        return f"http://127.0.0.1:{self.config.ops_port}"

    async def prepare(self) -> None:
        """Write nginx.conf and make its folders, then let ``nginx -t`` check it."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.run_dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config.render())
        proc = await asyncio.create_subprocess_exec(
            *self.argv[:-2], "-t", "-q",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise ProcessError(f"nginx rejects {self.conf_path}:\n{out.decode(errors='replace')}")

    async def wait_ready(self) -> None:
        """Wait until nginx answers its own ``/healthz``."""

        async def healthy() -> bool:
            timeout = aiohttp.ClientTimeout(total=2)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(f"{self.ops_url}/healthz") as resp:
                    return resp.status == 200

        await poll(f"{self.name} (nginx :{self.config.http_port})", healthy, proc=self)

    async def reload(self) -> None:
        """Re-render nginx.conf (e.g. with other gateways) and have nginx load it (SIGHUP)."""
        await self.prepare()
        self.signal(signal.SIGHUP)
