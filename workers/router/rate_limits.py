"""Rate limits of keys and teams: requests (RPM), tokens (TPM) and calls in flight. Pure.

Enforced by the router that owns the team's partition (docs/decisions/0014): every
request of a team limited on the team or on the request's key is keyed by team id on
tollway.requests.* (`is_rate_limited`, read by the ingress), so ONE router sees all of
them and counts exactly, whatever the number of ingress replicas. Time is an argument
(`now_ms`, epoch or monotonic milliseconds, as long as one limiter sees one clock);
nothing here sleeps or does I/O.

    scope        `key:<key_id>` and `team:<team_id>`; a request is admitted only if
                 every limited scope it belongs to has room (`RateLimiter.acquire`)
    rpm          requests admitted in any 60 s window            <= rpm
    tpm          tokens charged by admission time in any 60 s window <= tpm
                 (charged: the estimate at admission, settled to the provider's count)
    concurrency  leases open at once                             <= max_concurrency

Windows are sliding, not token buckets: a bucket that starts full lets 2 x limit
through in the first minute, a sliding window never more than the limit in ANY 60 s
window. The log keeps one entry per `slot_ms` (100 ms) slot holding the amount
charged in it, so a scope costs at most window/slot + 1 = 601 entries whatever its
limit, and a charge counts for 60.0 to 60.1 s (conservative by at most one slot).

TPM: a request is charged `estimate_tokens` at admission (prompt bytes / 3, the
budget reservations' upper estimate, plus its max output or a default) in the slot of
its admission; `Lease.settle` replaces the estimate by the provider's count after the
call (a failed call settles to 0 and gives its tokens back). So the window holds
`tpm` exactly when every estimate is an upper bound; a call whose real usage exceeds
its estimate (no `max_tokens` and a longer answer than the default) overshoots by the
difference, once, and delays the next admissions by as much. A request larger than
the whole limit is admitted only into an empty window (it would otherwise wait for
ever).

Concurrency counts open leases per scope (always, also for scopes without a
`max_concurrency`, so a limit added while calls run sees them). `Lease.release` is
idempotent; the router releases on every end path (workers/router/rate_gate.py).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from workers.budget.reservations import estimate_prompt_tokens, output_tokens_bound
from workers.tenancy.model import Limits, TenancyView

WINDOW_MS: Final = 60_000
"""RPM and TPM are per rolling minute."""
SLOT_MS: Final = 100
"""Granularity of the sliding log: charges within one slot share one entry."""
DEFAULT_OUTPUT_TOKENS: Final = 1_024
"""Output tokens charged at admission for a request without max_tokens (settled later)."""
CONCURRENCY_RETRY_AFTER_S: Final = 1
"""Retry-After of a refusal for calls in flight: when one ends is unknown."""
RETRY_AFTER_KEY: Final = "tollway.retry_after_s"
"""Result metadata key carrying a refusal's Retry-After (whole seconds) to the ingress,
which answers it as the `retry-after` header (a Result has no headers)."""

LimitName = Literal["rpm", "tpm", "max_concurrency"]


@dataclass(frozen=True, slots=True)
class Scope:
    """One limited scope of a request: `key:<id>` or `team:<id>` and its limits now."""

    name: str
    limits: Limits


def scopes_of(view: TenancyView, team_id: str, key_id: str | None) -> tuple[Scope, ...]:
    """The limited scopes a request belongs to, key first; () when nothing limits it."""
    found: list[Scope] = []
    if key_id is not None:
        key = view.key(key_id)
        if key is not None and not key.limits.is_unlimited():
            found.append(Scope(f"key:{key_id}", key.limits))
    team = view.team(team_id)
    if team is not None and not team.limits.is_unlimited():
        found.append(Scope(f"team:{team_id}", team.limits))
    return tuple(found)


def is_rate_limited(view: TenancyView, team_id: str, key_id: str | None) -> bool:
    """Whether the request must be counted by its team's router, i.e. keyed by team id.

    Looking at the team and at this request's key is enough: a request through an
    unlimited key of an unlimited team touches no counter, so it may go anywhere.
    """
    return bool(scopes_of(view, team_id, key_id))


def estimate_tokens(
    body: bytes,
    request: Mapping[str, Any],
    *,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    embeddings: bool = False,
) -> int:
    """Tokens charged at admission: prompt bytes / 3 (rounded up) plus the most output the
    request may produce (`max_completion_tokens`/`max_tokens` x `n`, else the default;
    none for embeddings). At least 1."""
    output = 0 if embeddings else output_tokens_bound(request, None, default_output_tokens)
    return max(1, estimate_prompt_tokens(body) + output)


@dataclass(frozen=True, slots=True)
class Refusal:
    """No room now. `wait_ms`: when the window will have room for this request (None:
    only when a call of the scope ends, i.e. concurrency)."""

    scope: str
    limit: LimitName
    allowed: int
    wait_ms: int | None

    @property
    def retry_after_s(self) -> int:
        """Whole seconds, rounded UP (a client retrying then finds room), at least 1."""
        if self.wait_ms is None:
            return CONCURRENCY_RETRY_AFTER_S
        return max(1, math.ceil(self.wait_ms / 1000))

    def message(self) -> str:
        what = {
            "rpm": f"{self.allowed} requests per minute",
            "tpm": f"{self.allowed} tokens per minute",
            "max_concurrency": f"{self.allowed} requests in flight",
        }[self.limit]
        return f"Rate limit reached for {self.scope}: {what}. Retry after {self.retry_after_s} s."


class _Slot:
    __slots__ = ("amount", "live", "start_ms")

    def __init__(self, start_ms: int) -> None:
        self.start_ms = start_ms
        self.amount = 0
        self.live = True


class _Log:
    """Amounts charged per slot over the last window; `total` is their sum."""

    __slots__ = ("slots", "total")

    def __init__(self) -> None:
        self.slots: deque[_Slot] = deque()
        self.total = 0

    def expire(self, now_ms: int, window_ms: int, slot_ms: int) -> None:
        while self.slots and self.slots[0].start_ms + slot_ms + window_ms <= now_ms:
            gone = self.slots.popleft()
            gone.live = False
            self.total -= gone.amount

    def wait_ms(self, amount: int, limit: int, now_ms: int, window_ms: int, slot_ms: int) -> int:
        """0 if `amount` fits now, else how long until enough of the window has expired.
        An amount above the limit fits only an empty window. Call after `expire`."""
        if limit <= 0:
            return window_ms  # nothing is allowed; look again later (the limit may change)
        left = self.total
        if left + amount <= limit or left == 0:
            return 0
        for slot in self.slots:
            left -= slot.amount
            if left + amount <= limit or left <= 0:
                return max(1, slot.start_ms + slot_ms + window_ms - now_ms)
        return 1  # unreachable: the last slot leaves an empty window

    def charge(self, amount: int, now_ms: int, slot_ms: int) -> _Slot:
        start_ms = now_ms - now_ms % slot_ms
        if not self.slots or self.slots[-1].start_ms < start_ms:
            self.slots.append(_Slot(start_ms))
        slot = self.slots[-1]  # a clock that stepped back charges the newest slot
        slot.amount += amount
        self.total += amount
        return slot


class _ScopeState:
    __slots__ = ("in_flight", "requests", "tokens")

    def __init__(self) -> None:
        self.requests = _Log()
        self.tokens = _Log()
        self.in_flight = 0

    def idle(self) -> bool:
        return self.in_flight == 0 and self.requests.total == 0 and self.tokens.total == 0


class Lease:
    """An admitted request: its token charges (to settle) and its concurrency (to release)."""

    __slots__ = ("_charges", "_released", "_settled", "_states", "tokens")

    def __init__(
        self, states: Sequence[_ScopeState], charges: Sequence[tuple[_Log, _Slot]], tokens: int
    ) -> None:
        self._states = states
        self._charges = charges
        self.tokens = tokens
        self._settled = False
        self._released = False

    def settle(self, actual_tokens: int) -> None:
        """Replace the estimate by the provider's count (once; later calls do nothing).
        A charge whose slot already left the window is not corrected: it counts no more."""
        if self._settled:
            return
        self._settled = True
        delta = max(0, actual_tokens) - self.tokens
        for log, slot in self._charges:
            if slot.live:
                slot.amount += delta
                log.total += delta

    def release(self) -> None:
        """End the request's concurrency (idempotent). The estimate stays charged if the
        lease was never settled: a call cut short may still have been billed."""
        if self._released:
            return
        self._released = True
        for state in self._states:
            state.in_flight -= 1

    @property
    def released(self) -> bool:
        return self._released


class RateLimiter:
    """The counters of one router: per scope, the request and token windows and the
    calls in flight. Scopes without a charge in the window and without a call in flight
    are forgotten every `prune_every` admissions (memory follows the active scopes)."""

    def __init__(
        self, *, window_ms: int = WINDOW_MS, slot_ms: int = SLOT_MS, prune_every: int = 1_024
    ) -> None:
        if window_ms <= 0 or slot_ms <= 0:
            raise ValueError("window_ms and slot_ms must be positive")
        self.window_ms = window_ms
        self.slot_ms = slot_ms
        self._states: dict[str, _ScopeState] = {}
        self._prune_every = prune_every
        self._since_prune = 0

    def acquire(self, scopes: Sequence[Scope], now_ms: int, tokens: int) -> Lease | Refusal:
        """Admit a request of `tokens` estimated tokens into every scope, or refuse it.

        `scopes` should be distinct. All or nothing: a refusal charges nothing. The
        refusal names the limit with the longest wait, so retrying after its Retry-After
        finds every window with room (unless other requests took it first)."""
        self._since_prune += 1
        if self._since_prune >= self._prune_every:
            self.prune(now_ms)
        tokens = max(1, tokens)
        states = [self._state(scope.name) for scope in scopes]
        for state in states:
            state.requests.expire(now_ms, self.window_ms, self.slot_ms)
            state.tokens.expire(now_ms, self.window_ms, self.slot_ms)
        worst: Refusal | None = None
        for scope, state in zip(scopes, states, strict=True):
            for refusal in self._refusals(scope, state, now_ms, tokens):
                if worst is None or _longer(refusal, worst):
                    worst = refusal
        if worst is not None:
            return worst
        charges: list[tuple[_Log, _Slot]] = []
        for state in states:
            state.requests.charge(1, now_ms, self.slot_ms)
            charges.append((state.tokens, state.tokens.charge(tokens, now_ms, self.slot_ms)))
            state.in_flight += 1
        return Lease(states, charges, tokens)

    def _refusals(
        self, scope: Scope, state: _ScopeState, now_ms: int, tokens: int
    ) -> list[Refusal]:
        limits, found = scope.limits, []
        if limits.rpm is not None:
            wait = state.requests.wait_ms(1, limits.rpm, now_ms, self.window_ms, self.slot_ms)
            if wait:
                found.append(Refusal(scope.name, "rpm", limits.rpm, wait))
        if limits.tpm is not None:
            wait = state.tokens.wait_ms(tokens, limits.tpm, now_ms, self.window_ms, self.slot_ms)
            if wait:
                found.append(Refusal(scope.name, "tpm", limits.tpm, wait))
        if limits.max_concurrency is not None and state.in_flight >= limits.max_concurrency:
            found.append(Refusal(scope.name, "max_concurrency", limits.max_concurrency, None))
        return found

    def _state(self, name: str) -> _ScopeState:
        state = self._states.get(name)
        if state is None:
            state = self._states[name] = _ScopeState()
        return state

    def prune(self, now_ms: int) -> None:
        """Forget idle scopes (nothing in the window, nothing in flight)."""
        self._since_prune = 0
        for name in list(self._states):
            state = self._states[name]
            state.requests.expire(now_ms, self.window_ms, self.slot_ms)
            state.tokens.expire(now_ms, self.window_ms, self.slot_ms)
            if state.idle():
                del self._states[name]

    def usage(self, scope: str, now_ms: int) -> tuple[int, int, int]:
        """(requests, tokens) charged in the window ending now, and calls in flight."""
        state = self._states.get(scope)
        if state is None:
            return 0, 0, 0
        state.requests.expire(now_ms, self.window_ms, self.slot_ms)
        state.tokens.expire(now_ms, self.window_ms, self.slot_ms)
        return state.requests.total, state.tokens.total, state.in_flight

    @property
    def scopes(self) -> int:
        """Scopes currently tracked (memory)."""
        return len(self._states)


def _longer(a: Refusal, b: Refusal) -> bool:
    """Whether `a` waits longer than `b`; an unknown (concurrency) wait is the shortest."""
    return (a.wait_ms or 0) > (b.wait_ms or 0)
