"""Bearer-token authentication: HS256 JWTs with ``sub``, ``roles`` and ``exp`` (API.md).

Every process that serves ``/v1`` verifies the token itself (the gateway and the FE servers),
so an FE server reached directly is no weaker than the gateway. Verified tokens are kept in a
small cache keyed by the token string; a cached entry still honours ``exp``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import jwt
from aiohttp import web

from shared.errors import Unauthorized

ROLES = frozenset({"admin", "clinician", "patient", "researcher", "auditor"})
_CACHE_MAX = 10_000

# API.md fixes the local secret ("local-dev-secret", 16 bytes); production insists on a long
# one (shared.settings), so the library's short-key warning only adds noise.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller."""

    sub: str
    roles: frozenset[str]
    exp: float

    def has(self, *roles: str) -> bool:
        """True when the caller holds any of ``roles``."""
        return not self.roles.isdisjoint(roles)


class TokenVerifier:
    """Verifies tokens signed with one secret, caching the ones already verified."""

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._cache: dict[str, Principal] = {}

    def verify(self, token: str) -> Principal:
        """Return the token's principal, or raise :class:`Unauthorized`."""
        cached = self._cache.get(token)
        if cached is not None and cached.exp > time.time():
            return cached
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized("the token is not valid") from exc
        sub, roles = claims.get("sub"), claims.get("roles", [])
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("the token's sub claim must be a non-empty string")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthorized("the token's roles claim must be a list of role names")
        principal = Principal(sub, frozenset(r for r in roles if r in ROLES), float(claims["exp"]))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = principal
        return principal

    def from_request(self, request: web.Request) -> Principal:
        """Authenticate ``request`` by its ``Authorization: Bearer`` header."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("an Authorization: Bearer token is required")
        return self.verify(token.strip())


def make_token(secret: str, sub: str, roles: list[str], ttl_seconds: int = 12 * 3600) -> str:
    """Sign a token for ``sub`` with ``roles`` (local stack, tests, ``make token``)."""
    now = int(time.time())
    return jwt.encode(
        {"sub": sub, "roles": roles, "iat": now, "exp": now + ttl_seconds}, secret, "HS256"
    )
