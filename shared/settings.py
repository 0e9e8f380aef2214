"""Process settings, read once from the environment (``MEDSVC_*``) and validated at start-up.

This is the only module that reads the environment. A bad value stops the process with a
one-line message naming the variable (see :func:`load`).
"""

from __future__ import annotations

import sys
from typing import Any, Literal, TypedDict, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_DEV_SECRET = "local-dev-secret"


class CommonSettings(BaseSettings):
    """Settings every process shares."""

    model_config = SettingsConfigDict(env_prefix="MEDSVC_", extra="ignore")

    env: Literal["development", "production"] = "development"
    jwt_secret: SecretStr = SecretStr(LOCAL_DEV_SECRET)
    shard_map: str = "var/shardmap.json"
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Password for the PostgreSQL roles named in DSNs; DSNs themselves carry none.
    pg_password: SecretStr | None = None
    pg_pool_min: int = Field(default=2, ge=0)
    # The Redis ACL user and password of the shards' caches (FE servers, gateways); the
    # shard map's Redis URLs carry none. None: Redis's default user, no password (local).
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    pg_pool_max: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _no_default_secret_in_production(self) -> CommonSettings:
        if self.env == "production" and self.jwt_secret.get_secret_value() == LOCAL_DEV_SECRET:
            raise ValueError("MEDSVC_JWT_SECRET must be set (not the local default) in production")
        if self.env == "production" and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("MEDSVC_JWT_SECRET must be at least 32 bytes in production")
        return self


class FESettings(CommonSettings):
    """An FE server: one shard, one or more services."""

    shard: int = Field(default=0, ge=0)
    services: str = "user,visit"
    # The shard's Redis read cache (MEDSVC_CACHE=false reads every time from PostgreSQL).
    cache: bool = True
    # The longest an entry stays cached (s); each fill draws its own, from half of this up.
    cache_ttl: float = Field(default=300.0, gt=0)
    # Comma-separated base URLs of audit_service; empty: no outbox relay runs here (events
    # wait in the shard's outbox).
    audit_urls: str = ""
    # Comma-separated base URLs of the anonymizer API: a study consent checks the study exists.
    anonymizer_urls: str = ""
    # Requests in flight past which more are shed at once with 503 (shared/admission.py).
    max_in_flight: int = Field(default=64, ge=1)

    @property
    def service_list(self) -> list[str]:
        return [s.strip() for s in self.services.split(",") if s.strip()]

    @property
    def audit_url_list(self) -> list[str]:
        return [u.strip() for u in self.audit_urls.split(",") if u.strip()]


class GatewaySettings(CommonSettings):
    """The gateway: routing and balancing over FE clusters."""

    # Answer cached GETs from the shards' Redis without the FE hop (MEDSVC_CACHE=false: never).
    cache: bool = True
    # Seconds a member that failed a connection stays out of rotation.
    member_cooldown: float = Field(default=5.0, gt=0)
    upstream_timeout: float = Field(default=15.0, gt=0)
    # Requests in flight past which more are shed at once with 503 (shared/admission.py);
    # GETs the gateway may answer from the cache have the higher bound: they are shed last.
    max_in_flight: int = Field(default=48, ge=1)
    max_in_flight_cached: int = Field(default=72, ge=1)
    # Seconds a request for a user whose bucket is moving (421 from the shard) is held and
    # retried while the gateway waits for the new shard map, before it answers 503.
    move_hold: float = Field(default=15.0, gt=0)
    # Comma-separated base URLs of the audit_service and anonymizer processes.
    audit_urls: str = ""
    anonymizer_urls: str = ""


class RedisCredentials(TypedDict):
    """The keyword arguments a Redis client takes to log in."""

    username: str | None
    password: str | None


def redis_credentials(settings: CommonSettings) -> RedisCredentials:
    """``username`` and ``password`` for a Redis client, from the settings."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return {"username": settings.redis_username, "password": password}


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], **overrides: object) -> S:
    """Build ``cls`` from the environment plus ``overrides``; exit with one line on error."""
    try:
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return cls(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = (
            "MEDSVC_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else "settings"
        )
        sys.exit(f"configuration error: {name}: {err['msg']}")
