"""Structured JSON logs: one object a line, each with ``action`` and the request id.

No PHI is ever passed to a logger: log userNames and ids, never names, birth dates,
addresses or notes. :func:`setup_logging` installs the formatter on the root logger.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import re
import sys
import time
import uuid

import orjson

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# One rule for a client's X-Request-ID at every hop (nginx renders the same pattern into its
# map): up to REQUEST_ID_MAX_LENGTH characters a log line can hold as they are. Anything else
# (too long, empty, spaces, quotes, control characters) is replaced by a new id rather than
# cut, so that every hop logs the same id for one request.
REQUEST_ID_MAX_LENGTH = 128
REQUEST_ID_PATTERN = rf"[A-Za-z0-9._:-]{{1,{REQUEST_ID_MAX_LENGTH}}}"
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)


def request_id_from(header: str | None) -> str:
    """The client's request id when it follows the rule, else a new one (32 hex digits)."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object with the request id and any ``extra`` fields."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": self.process_name,
            "logger": record.name,
            "requestId": request_id_var.get(),
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class AccessLine:
    """The access lines of a process, one per request, written to stderr once per loop turn.

    Each is the JSON object :class:`JsonFormatter` makes for a record of the ``medsvc.access``
    logger, built without the LogRecord, the handler chain and the formatter's walk over the
    record's attributes; the timestamp text is made once a second. The lines of the requests
    answered in one turn of the event loop go out in one ``write`` at the start of the next
    turn (a busy server answers several per turn), not one system call each.
    :func:`setup_logging` switches this on; until then (an in-process test app)
    :meth:`write` goes through the logger.
    """

    def __init__(self) -> None:
        self.process: str | None = None
        self._second = -1
        self._stamp = ""
        self._logger = logging.getLogger("medsvc.access")
        self._pending: list[bytes] = []

    def write(self, fields: dict[str, object]) -> None:
        """Log ``fields`` (no PHI: methods, route templates, statuses, shard ids) at INFO."""
        if not self._logger.isEnabledFor(logging.INFO):
            return
        if self.process is None:
            self._logger.info("request", extra=fields)
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        line = {
            "ts": f"{self._stamp}.{int((now - second) * 1000):03d}Z",
            "level": "info",
            "process": self.process,
            "logger": "medsvc.access",
            "requestId": request_id_var.get(),
            "msg": "request",
            **fields,
        }
        self._pending.append(orjson.dumps(line, default=str, option=orjson.OPT_APPEND_NEWLINE))
        if len(self._pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write now
                self.flush()

    def flush(self) -> None:
        """Write the pending lines (one system call for all of them)."""
        data, self._pending = b"".join(self._pending), []
        try:
            while data:
                data = data[os.write(2, data):]
        except OSError:
            pass  # as logging.StreamHandler: a lost log line never fails a request


ACCESS = AccessLine()


def setup_logging(process_name: str, level: str = "INFO") -> None:
    """Send JSON lines to stderr for every logger of this process."""
    sys.stderr.flush()
    ACCESS.process = process_name
    atexit.register(ACCESS.flush)  # lines of the last loop turn before a clean exit
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate ours, without the request id.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
