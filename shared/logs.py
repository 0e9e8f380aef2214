"""Structured JSON logs: one object a line, each with ``action`` and the request id.

No PHI is ever passed to a logger: log userNames and ids, never names, birth dates,
addresses or notes. :func:`setup_logging` installs the formatter on the root logger.
"""

from __future__ import annotations

import contextvars
import logging
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


def setup_logging(process_name: str, level: str = "INFO") -> None:
    """Send JSON lines to stderr for every logger of this process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate ours, without the request id.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
