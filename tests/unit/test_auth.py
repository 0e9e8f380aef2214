"""Bearer tokens (API.md): HS256, sub, roles, exp required."""

import time

import jwt
import pytest

from shared.auth import TokenVerifier, make_token
from shared.errors import Unauthorized

SECRET = "local-dev-secret"


def test_a_signed_token_yields_its_principal() -> None:
    p = TokenVerifier(SECRET).verify(make_token(SECRET, "dr.jones", ["clinician", "bogus"]))
    assert p.sub == "dr.jones" and p.roles == {"clinician"}  # unknown role names grant nothing
    assert p.has("clinician") and not p.has("admin")


@pytest.mark.parametrize(
    "token",
    [
        jwt.encode(
            {"sub": "a", "roles": ["admin"], "exp": int(time.time()) + 60}, "another-secret"
        ),
        jwt.encode({"sub": "a", "roles": ["admin"], "exp": int(time.time()) - 1}, SECRET),
        jwt.encode({"sub": "a", "roles": ["admin"]}, SECRET),
        jwt.encode({"roles": ["admin"], "exp": int(time.time()) + 60}, SECRET),
        jwt.encode({"sub": "a", "roles": "admin", "exp": int(time.time()) + 60}, SECRET),
        jwt.encode(
            {"sub": "a", "roles": ["admin"], "exp": int(time.time()) + 60},
            SECRET,
            algorithm="HS512",
        ),
        "garbage",
    ],
)
def test_bad_tokens_are_unauthorized(token: str) -> None:
    with pytest.raises(Unauthorized):
        TokenVerifier(SECRET).verify(token)


def test_a_cached_token_still_expires() -> None:
    verifier = TokenVerifier(SECRET)
    token = make_token(SECRET, "a", ["admin"], ttl_seconds=1)
    verifier.verify(token)
    time.sleep(1.1)
    with pytest.raises(Unauthorized):
        verifier.verify(token)
