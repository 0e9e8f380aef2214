"""TCP ports on 127.0.0.1: free ones for tests, a fixed layout for ``make run``."""

from __future__ import annotations

import socket

# Ports the machine's own servers may hold; the local stack never takes them.
RESERVED = frozenset({5432, 6379, 8080, 8443})


def free_port() -> int:
    """Return a port that was free a moment ago (the kernel's pick for a bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_free(port: int) -> bool:
    """Whether nothing listens on (or holds) 127.0.0.1:``port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class PortAllocator:
    """Hands out ports: kernel-chosen free ones, or consecutive ones from ``base``.

    The fixed layout keeps the addresses of ``make run`` (and so its shard map and DSNs)
    the same from one start to the next. A taken port is an error there, not a silent
    move: it most likely means another stack is already running.
    """

    def __init__(self, base: int | None = None) -> None:
        self._next = base
        self._given: set[int] = set()

    def take(self, port: int | None = None) -> int:
        """Return ``port`` if given and non-zero (checked free), else the next port."""
        if port:
            return self._claim(port)
        if self._next is None:
            while True:
                candidate = free_port()
                if candidate not in self._given and candidate not in RESERVED:
                    self._given.add(candidate)
                    return candidate
        while self._next in RESERVED or self._next in self._given:
            self._next += 1
        candidate = self._next
        self._next += 1
        return self._claim(candidate)

    def _claim(self, port: int) -> int:
        if port in self._given:
            raise ValueError(f"port {port} is allocated twice")
        if not is_free(port):
            raise OSError(f"port 127.0.0.1:{port} is in use (is another stack running?)")
        self._given.add(port)
        return port
