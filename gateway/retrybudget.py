"""A retry budget: the gateway's retries stay a small fraction of its requests.

Why: a retry is one more request. When members fail because they are overloaded, retrying
every failure on another member multiplies the load exactly when there is too much of it,
and the overload feeds itself (the SRE book's "Addressing Cascading Failures"; Finagle's
and gRPC's retry budgets). So every first attempt puts ``ratio`` of a token in a bucket,
and every retry takes a whole token out; without one, the request is not retried and its
caller gets the 503 of the failed attempt. Over any stretch of time the retries are then
at most ``ratio`` of the requests, plus a small steady allowance (``min_per_second``,
``cap`` to start with) so that a quiet gateway still fails over when a member dies.

One budget per gateway process, over all clusters: a member that dies costs each gateway
a handful of retries before it leaves rotation (gateway/balancer.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import Counter

RETRIES = Counter(
    "medsvc_gateway_retries_total",
    "Retries of a request on another member, by outcome: allowed, or denied by the retry"
    " budget (the caller got 503)",
    ["outcome"],
)


class RetryBudget:
    """Token bucket: each first attempt deposits ``ratio``, each retry spends 1."""

    def __init__(
        self, ratio: float = 0.1, min_per_second: float = 2.0, cap: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.cap = cap
        self.clock = clock
        self.balance = cap
        self._at = clock()

    def _refill(self, deposit: float = 0.0) -> None:
        now = self.clock()
        earned = (now - self._at) * self.min_per_second + deposit
        self.balance = min(self.cap, self.balance + earned)
        self._at = now

    def admit(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (0: the first) of a request may go out.

        The first always goes (and pays into the budget); a retry only with a token.
        """
        if attempt == 0:
            self._refill(self.ratio)
            return True
        self._refill()
        if self.balance >= 1.0:
            self.balance -= 1.0
            RETRIES.labels("allowed").inc()
            return True
        RETRIES.labels("denied").inc()
        return False


# The gateway's one budget (a process serves one event loop: no lock needed).
BUDGET = RetryBudget()
