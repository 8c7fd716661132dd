"""The router's rate-limit gate: admit each record of a rate-limited team before its call.

The limits are read from the `TenancyView` for every record (a change applies to
the next admission); the counting is `rate_limits.RateLimiter` (pure). This module
adds what needs a clock and an event loop:

- sync (interactive, mode `sync`) over a limit: no call; the record's Result is a 429
  `rate_limit_exceeded` whose metadata carries `tollway.retry_after_s`, which the
  ingress answers as the `retry-after` header (`ingress/app.py` `result_response`);
- async and batch over a limit: the record waits for room, first come first served
  per (team, key): only the oldest waiting record of a (team, key) polls the limiter,
  waking when a window slot expires (the limiter says when, re-checked at least every
  `max_nap_s`) or when a call of any limited scope ends. The consumer counts waiting
  records apart from calls (`waiting`), so a waiting record holds no call slot and
  records of other teams in the same partition go on (workers/router/consumer.py);
- every admitted record's lease is settled to the tokens its attempts used and
  released when the execution ends, whichever way it ends (return, exception,
  cancellation).

A sync record whose deadline already passed skips the gate (the executor answers it
504 without a call), so it spends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import orjson

from schemas.errors import RateLimited
from schemas.openai import EMBEDDINGS_ENDPOINT
from schemas.records import RequestEnvelope
from workers.router.execution import Execution
from workers.router.rate_limits import (
    DEFAULT_OUTPUT_TOKENS,
    RETRY_AFTER_KEY,
    Lease,
    RateLimiter,
    Refusal,
    Scope,
    estimate_tokens,
    scopes_of,
)
from workers.tenancy.model import TenancyView


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class RateGate:
    """Admission of records by their key's and team's rate limits; unlimited without a view."""

    def __init__(
        self,
        tenancy: TenancyView | None,
        *,
        limiter: RateLimiter | None = None,
        clock_ms: Callable[[], int] = _wall_ms,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        max_nap_s: float = 1.0,
    ) -> None:
        self.tenancy = tenancy
        self.limiter = limiter or RateLimiter()
        self.clock_ms = clock_ms
        self.default_output_tokens = default_output_tokens
        self.max_nap_s = max_nap_s
        self._turns: dict[tuple[str, str | None], asyncio.Lock] = {}
        self._queued: dict[tuple[str, str | None], int] = {}
        self._changed = asyncio.Event()
        self.refused = 0
        """Sync records answered 429 so far (for logs and tests)."""

    def scopes(self, envelope: RequestEnvelope) -> tuple[Scope, ...]:
        if self.tenancy is None:
            return ()
        return scopes_of(self.tenancy, envelope["team_id"], envelope["key_id"])

    async def run(
        self,
        envelope: RequestEnvelope,
        execute: Callable[[], Awaitable[Execution]],
        refuse: Callable[[RateLimited], Execution],
        waiting: Callable[[], AbstractContextManager[None]],
    ) -> Execution:
        """`execute()` once the record is admitted; `refuse(error)` for a sync record over
        a limit; queued records wait inside `waiting()` (the consumer's count)."""
        scopes = self.scopes(envelope)
        sync = envelope["mode"] == "sync"
        if not scopes or (sync and self.clock_ms() > envelope["deadline_ms"]):
            return await execute()
        tokens = self._estimate(envelope)
        got: Lease | Refusal | None = None  # None: older records of its (team, key) wait
        if sync or (envelope["team_id"], envelope["key_id"]) not in self._queued:
            got = self.limiter.acquire(scopes, self.clock_ms(), tokens)
        if isinstance(got, Refusal) and sync:
            self.refused += 1
            return _refused(refuse, got)
        if not isinstance(got, Lease):
            with waiting():
                got = await self._wait_turn(envelope, tokens)
        return await self._run_leased(got, execute)

    async def _run_leased(
        self, lease: Lease, execute: Callable[[], Awaitable[Execution]]
    ) -> Execution:
        try:
            execution = await execute()
            lease.settle(
                sum(a["prompt_tokens"] + a["completion_tokens"] for a in execution.attempts)
            )
            return execution
        finally:
            lease.release()
            self._notify()

    async def _wait_turn(self, envelope: RequestEnvelope, tokens: int) -> Lease:
        """Wait, behind older records of the same (team, key), until the limits admit it."""
        turn_key = (envelope["team_id"], envelope["key_id"])
        turn = self._turns.get(turn_key)
        if turn is None:
            turn = self._turns[turn_key] = asyncio.Lock()  # FIFO: waiters wake in order
        self._queued[turn_key] = self._queued.get(turn_key, 0) + 1
        try:
            async with turn:
                while True:
                    # Re-read the limits every time: one raised or removed meanwhile applies.
                    got = self.limiter.acquire(self.scopes(envelope), self.clock_ms(), tokens)
                    if isinstance(got, Lease):
                        return got
                    await self._nap(got)
        finally:
            self._queued[turn_key] -= 1
            if not self._queued[turn_key]:
                del self._queued[turn_key]
                del self._turns[turn_key]

    async def _nap(self, refusal: Refusal) -> None:
        nap_s = self.max_nap_s
        if refusal.wait_ms is not None:
            nap_s = min(nap_s, refusal.wait_ms / 1000)
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(nap_s):
                await changed.wait()

    def _notify(self) -> None:
        """A call ended: waiting heads look again (a concurrency slot or tokens came back)."""
        if self._queued:
            self._changed.set()
            self._changed = asyncio.Event()

    def _estimate(self, envelope: RequestEnvelope) -> int:
        try:
            request: Any = orjson.loads(envelope["body"])
        except orjson.JSONDecodeError:
            request = {}  # the executor answers it 400; charge the prompt only
        return estimate_tokens(
            envelope["body"],
            request if isinstance(request, dict) else {},
            default_output_tokens=self.default_output_tokens,
            embeddings=envelope["endpoint"] == EMBEDDINGS_ENDPOINT,
        )

    @property
    def waiting(self) -> int:
        """Records waiting for room, all (team, key) together."""
        return sum(self._queued.values())


def _refused(refuse: Callable[[RateLimited], Execution], refusal: Refusal) -> Execution:
    execution = refuse(RateLimited(refusal.message(), retry_after_s=refusal.retry_after_s))
    result = execution.result
    result["metadata"] = {**result["metadata"], RETRY_AFTER_KEY: str(refusal.retry_after_s)}
    return execution
