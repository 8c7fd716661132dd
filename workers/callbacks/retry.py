"""When to try a webhook delivery again. Pure: the random draw and the clock are inputs.

Exponential backoff with jitter: the n-th retry waits about
`min(max_delay_s, base_s * factor ** (n - 1))`, spread by +-`jitter` so that
endpoints coming back after an outage are not hit by every retry at once. After
`give_up_after_s` since the first attempt (about 3 days by default) the delivery
goes to the dead-letter topic instead. With the defaults: 5 s, 20 s, 80 s, 5 min,
21 min, 85 min, 5.7 h, then every 6 h: 18 attempts in 3 days.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 5.0
    factor: float = 4.0
    max_delay_s: float = 6 * 3600.0
    give_up_after_s: float = 3 * 24 * 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.factor < 1 or self.max_delay_s < self.base_s:
            raise ValueError("retry policy needs base_s > 0, factor >= 1, max_delay_s >= base_s")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter is a fraction in [0, 1)")


def delay_s(policy: RetryPolicy, attempts_made: int, draw: float) -> float:
    """Wait before the next attempt, after `attempts_made` failed ones; `draw` in [0, 1)."""
    exponent = max(0, attempts_made - 1)
    # Cap the exponent before raising: 4 ** 1000 overflows a float.
    raw = policy.max_delay_s if exponent > 64 else policy.base_s * policy.factor**exponent
    capped = min(policy.max_delay_s, raw)
    return capped * (1 - policy.jitter + 2 * policy.jitter * draw)


def next_due_ms(
    policy: RetryPolicy, attempts_made: int, first_attempt_at_ms: int, now_ms: int, draw: float
) -> int | None:
    """When to try again, or None to give up (the retry would land past the deadline)."""
    due = now_ms + round(delay_s(policy, attempts_made, draw) * 1000)
    if due - first_attempt_at_ms > policy.give_up_after_s * 1000:
        return None
    return due
