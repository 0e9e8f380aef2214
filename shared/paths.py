"""Which request paths any hop acts on: one definition for nginx and the gateway.

A path that different parsers could read differently is refused outright rather than
normalised: a dot-segment (``/./``, ``/../``), an encoded dot or slash or backslash
(``%2e``, ``%2f``, ``%5c``, any case), a backslash, or an empty segment (``//``). nginx
would collapse ``/v1/audit/../../internal`` to ``/internal`` while a naive checker sees
``/v1/audit/...``; refusing both forms at every hop means the path a hop checked is the path
the next hop acts on. nginx renders :func:`refused_regex` and :func:`public_regex` into its
configuration (deploy/nginx/nginx.conf.j2) and the gateway calls :func:`is_plain_path`, so
the two cannot drift apart.

Through the door (nginx) only the API (``/v1/...``) and its reference page (``/docs``
and its ``/docs/assets/...``) pass; operations endpoints are served on each process's own
port only.
"""

from __future__ import annotations

import re

# Alternatives, each a PCRE and Python regex, that make a raw path unsafe to pass on. ``{end}``
# is where the path ends: ``$`` on a bare path, ``\?|$`` on a request URI with its query.
_REFUSED = (
    r"//",  # an empty segment
    r"/\.\.?(?=/|{end})",  # a "." or ".." segment
    r"%2[eEfF]",  # an encoded dot or slash
    r"%5[cC]",  # an encoded backslash
    r"\\",  # a backslash (a separator to some parsers)
)
# The public prefixes: the API, the reference page and its assets.
_PUBLIC = (r"/v1/", r"/docs(?={end})", r"/docs/assets/")


def refused_regex(end: str = "$") -> str:
    """The alternatives that make a path unsafe, anchored at the path's ``end``."""
    return "|".join(p.replace("{end}", end) for p in _REFUSED)


def public_regex(end: str = "$") -> str:
    """The prefixes the door lets through, anchored at the path's ``end``."""
    return "|".join(p.replace("{end}", end) for p in _PUBLIC)


_REFUSED_RE = re.compile(refused_regex())
_PUBLIC_RE = re.compile(rf"^(?:{public_regex()})")


def is_plain_path(target: str) -> bool:
    """Whether the path of ``target`` (as sent: percent-encoded, any query ignored) is safe."""
    path = target.partition("?")[0]
    return path.startswith("/") and _REFUSED_RE.search(path) is None


def is_public_path(target: str) -> bool:
    """Whether the door (nginx) passes ``target`` on to the gateways."""
    return is_plain_path(target) and _PUBLIC_RE.match(target.partition("?")[0]) is not None
