"""The local stack: PostgreSQL, Redis, the Python services and nginx as supervised processes.

``python -m deploy.localstack run`` (``make run``) brings the whole topology up on 127.0.0.1;
the e2e tests build the same :class:`Stack` on free ports.
"""

from .stack import CENTRAL_SERVICES, Stack, StackConfig
from .tokens import make_token

__all__ = ["CENTRAL_SERVICES", "Stack", "StackConfig", "make_token"]
