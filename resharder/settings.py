"""The resharder's settings: the shared ones (shard map path, PostgreSQL password) and where
its move registry lives."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import CommonSettings


class ResharderSettings(CommonSettings):
    """``MEDSVC_RESHARDER_DSN`` (else ``MEDSVC_CENTRAL_DSN``): the database of the registry.

    Beside a running ``make run`` nothing needs setting: the local stack writes its shard map
    path and central DSN to ``var/stack.env``, read when the environment does not say.
    """

    model_config = SettingsConfigDict(
        env_prefix="MEDSVC_", extra="ignore", env_file="var/stack.env"
    )

    resharder_dsn: str = ""
    central_dsn: str = ""
    # Seconds writes to the moving buckets may stay fenced before the move aborts.
    fence_limit: float = Field(default=2.0, gt=0)
    # In Kubernetes: publish a new map version by patching this ConfigMap (in-cluster API).
    shardmap_configmap: str = ""
    # Tests only (tests/e2e/test_resharding.py): stall for good at this point of a move
    # (resharder/move.py STALL_POINTS), to be killed there.
    resharder_stall: str = ""

    @property
    def registry_dsn(self) -> str:
        return self.resharder_dsn or self.central_dsn
