"""Run a route plan: retry retriable errors, fail over to the next route, keep every error.

The side effect (`call`) and the clock (`sleep`) are parameters, so the whole
policy is tested without sockets or real time.

Per route: a retriable error (429, 5xx, timeout, connection) is retried up to
`retries_per_route` times with exponential backoff plus jitter, honouring the
provider's Retry-After (a longer one fails over at once); then the next route. A
`ProviderBadRequest` (the request itself is wrong) stops everything at once:
neither retried nor failed over. Any other `ProviderError` (e.g. bad
credentials on one deployment) fails over without retrying.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from schemas.errors import AllProvidersFailed, ProviderError, ProviderRateLimited
from schemas.routes import Deployment

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries_per_route: int = 1
    base_backoff_s: float = 0.05
    max_backoff_s: float = 5.0

    def backoff_s(self, retry: int, error: ProviderError, rand: float) -> float | None:
        """Seconds to wait before retry number `retry` (1-based); `rand` in [0, 1).

        None when the provider asks for a longer pause than `max_backoff_s`: then
        retrying the same route is pointless and the plan fails over at once.
        """
        if isinstance(error, ProviderRateLimited) and error.retry_after_s is not None:
            if error.retry_after_s > self.max_backoff_s:
                return None
            return error.retry_after_s
        exponential: float = self.base_backoff_s * 2.0 ** (retry - 1)
        return min(exponential * (0.5 + rand), self.max_backoff_s)  # jitter: 0.5x..1.5x


async def run_fallback(
    routes: Sequence[Deployment],
    call: Callable[[Deployment], Awaitable[T]],
    *,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
) -> tuple[Deployment, T]:
    """The first successful `(route, reply)`; raises `AllProvidersFailed(errors)` or
    the `ProviderBadRequest` that ended the plan."""
    errors: list[tuple[str, ProviderError]] = []
    for route in routes:
        retry = 0
        while True:
            try:
                return route, await call(route)
            except ProviderError as error:
                if error.ends_plan:
                    raise
                errors.append((route.name, error))
                if not error.retriable or retry >= policy.retries_per_route:
                    break
                retry += 1
                delay_s = policy.backoff_s(retry, error, rand())
                if delay_s is None:
                    break
                await sleep(delay_s)
    raise AllProvidersFailed(errors)
