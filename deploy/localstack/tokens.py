"""Bearer tokens for the local stack: HS256 JWTs with ``sub``, ``roles`` and ``exp``."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import jwt
from jwt.warnings import InsecureKeyLengthWarning

DEFAULT_TTL = 12 * 3600


def make_token(secret: str, sub: str, roles: Sequence[str], ttl: int = DEFAULT_TTL) -> str:
    """Return an HS256 JWT for ``sub`` with ``roles``, valid for ``ttl`` seconds from now."""
    now = int(time.time())
    claims = {"sub": sub, "roles": list(roles), "iat": now, "exp": now + ttl}
    with warnings.catch_warnings():
        # API.md fixes the local secret ("local-dev-secret", 16 bytes); production refuses it.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS256")
