"""Pacing queued work to a deployment's quota. Pure; time is passed in.

Each deployment with an `rpm` and/or `tpm` quota has one token bucket per
quota, refilled continuously at quota/60_000 per millisecond up to one
minute's worth. Interactive (sync) calls always go at once and may drive a
bucket negative; queued work (async, batch) waits until its bucket is back
above zero. So interactive traffic has priority on a shared deployment, and
queued work slows down instead of failing when the quota is used up. A 429
from the provider pauses queued work on that deployment until its Retry-After.

Each router paces on its own share: with N routers a deployment's quota should
be divided by N in the routes file (stated in docs/decisions/0005).
"""

from __future__ import annotations

from dataclasses import dataclass, field

_MINUTE_MS = 60_000


@dataclass(slots=True)
class TokenBucket:
    """Starts full (one minute's worth)."""

    per_minute: float
    level: float = field(init=False)
    updated_ms: int = 0

    def __post_init__(self) -> None:
        if self.per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.level = self.per_minute

    def _refill(self, now_ms: int) -> None:
        elapsed = max(0, now_ms - self.updated_ms)
        self.level = min(self.per_minute, self.level + elapsed * self.per_minute / _MINUTE_MS)
        self.updated_ms = max(self.updated_ms, now_ms)

    def take(self, now_ms: int, amount: float) -> None:
        self._refill(now_ms)
        self.level -= amount

    def wait_ms(self, now_ms: int) -> int:
        """How long until the level is above zero (0 if it is now)."""
        self._refill(now_ms)
        if self.level > 0:
            return 0
        return int((-self.level + 1e-9) * _MINUTE_MS / self.per_minute) + 1


@dataclass(slots=True)
class _DeploymentPace:
    rpm: TokenBucket | None
    tpm: TokenBucket | None
    paused_until_ms: int = 0


class Pacer:
    def __init__(self) -> None:
        self._paces: dict[str, _DeploymentPace] = {}

    def _pace(self, name: str, rpm: int | None, tpm: int | None) -> _DeploymentPace:
        pace = self._paces.get(name)
        if pace is None:
            pace = _DeploymentPace(
                TokenBucket(rpm) if rpm else None, TokenBucket(tpm) if tpm else None
            )
            self._paces[name] = pace
        return pace

    def wait_ms(self, name: str, rpm: int | None, tpm: int | None, now_ms: int) -> int:
        """How long queued work must wait before calling `name` (0: go now)."""
        pace = self._pace(name, rpm, tpm)
        waits = [max(0, pace.paused_until_ms - now_ms)]
        waits += [b.wait_ms(now_ms) for b in (pace.rpm, pace.tpm) if b is not None]
        return max(waits)

    def spend(self, name: str, rpm: int | None, tpm: int | None, now_ms: int, tokens: int) -> None:
        """Record a call (1 request, `tokens` estimated tokens) against the quotas."""
        pace = self._pace(name, rpm, tpm)
        if pace.rpm is not None:
            pace.rpm.take(now_ms, 1)
        if pace.tpm is not None:
            pace.tpm.take(now_ms, tokens)

    def pause(self, name: str, until_ms: int) -> None:
        """The provider said 429: queued work waits until `until_ms`."""
        pace = self._paces.setdefault(name, _DeploymentPace(None, None))
        pace.paused_until_ms = max(pace.paused_until_ms, until_ms)
