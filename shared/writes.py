"""The one write path: every transaction that changes a user or a visit starts here.

:func:`begin_write` records, transaction-locally, who is writing and from where; the audit
triggers on the shard read these settings, so no handler can forget its audit event.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from shared.appkeys import SHARD_ID
from shared.auth import Principal
from shared.db import db_errors
from shared.logs import request_id_var


def write_tags(request: web.Request, actor: Principal, service: str) -> tuple[str, str, str]:
    """The (actor, source, request id) a write's transaction is tagged with; a write that
    tags itself inside its own statement (visit_service.store.create_visit) uses these."""
    return actor.sub, f"{service}/shard-{request.app[SHARD_ID]}", request_id_var.get()


async def begin_write(
    conn: asyncpg.Connection, request: web.Request, actor: Principal, service: str
) -> None:
    """Tag the current transaction with the actor, the source and the request id."""
    with db_errors("the shard database"):
        # set_config(..., true) is transaction-local: it vanishes at COMMIT or ROLLBACK.
        await conn.execute(
            """SELECT set_config('medsvc.actor', $1, true), set_config('medsvc.source', $2, true),
                      set_config('medsvc.request_id', $3, true)""",
            *write_tags(request, actor, service),
        )
