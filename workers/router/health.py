"""Per-deployment health: a circuit breaker and a latency average. Pure; time is passed in.

States of one deployment:

    closed     -> calls flow; `failure_threshold` provider-side failures in a row open it
    open       -> skipped by the planner until `cooldown_ms` has passed
    half-open  -> after the cooldown, one probe call is let through; success closes
                  the breaker, failure opens it for another cooldown

Only failures that say something about the deployment count (5xx, timeouts,
connection errors, 429s): a 400 is the request's fault. Latency is an EWMA of
successful calls in milliseconds, used by the least-latency strategy.

Each router keeps its own board (no shared state): a deployment that fails for
one router is skipped by that router within `failure_threshold` calls.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _State:
    consecutive_failures: int = 0
    opened_at_ms: int | None = None
    probe_in_flight: bool = False
    ewma_latency_ms: float | None = None


class HealthBoard:
    def __init__(
        self, *, failure_threshold: int = 5, cooldown_ms: int = 30_000, ewma_alpha: float = 0.2
    ) -> None:
        if failure_threshold < 1 or cooldown_ms < 0 or not 0 < ewma_alpha <= 1:
            raise ValueError("failure_threshold >= 1, cooldown_ms >= 0, 0 < ewma_alpha <= 1")
        self.failure_threshold = failure_threshold
        self.cooldown_ms = cooldown_ms
        self.ewma_alpha = ewma_alpha
        self._states: dict[str, _State] = {}

    def _state(self, name: str) -> _State:
        return self._states.setdefault(name, _State())

    def available(self, name: str, now_ms: int) -> bool:
        """May a call go to `name` now? (closed, or half-open with no probe in flight)."""
        state = self._states.get(name)
        if state is None or state.opened_at_ms is None:
            return True
        if now_ms - state.opened_at_ms < self.cooldown_ms:
            return False
        return not state.probe_in_flight

    def on_call(self, name: str, now_ms: int) -> None:
        """A call is starting; past the cooldown it is the half-open probe."""
        state = self._state(name)
        if state.opened_at_ms is not None and now_ms - state.opened_at_ms >= self.cooldown_ms:
            state.probe_in_flight = True

    def on_success(self, name: str, latency_ms: float) -> None:
        state = self._state(name)
        state.consecutive_failures = 0
        state.opened_at_ms = None
        state.probe_in_flight = False
        if state.ewma_latency_ms is None:
            state.ewma_latency_ms = latency_ms
        else:
            state.ewma_latency_ms += self.ewma_alpha * (latency_ms - state.ewma_latency_ms)

    def on_failure(self, name: str, now_ms: int) -> None:
        state = self._state(name)
        state.consecutive_failures += 1
        if state.probe_in_flight or state.consecutive_failures >= self.failure_threshold:
            state.opened_at_ms = now_ms
        state.probe_in_flight = False

    def latency_ms(self, name: str) -> float | None:
        state = self._states.get(name)
        return None if state is None else state.ewma_latency_ms

    def is_open(self, name: str) -> bool:
        state = self._states.get(name)
        return state is not None and state.opened_at_ms is not None
