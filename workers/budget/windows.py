"""Budget windows as plain arithmetic on event time (every time is a `*_ms` argument).

Spend is summed into fixed buckets keyed by their start (Unix epoch ms, UTC):

=========  =====================  ===========  ==========================================
window     kind                   bucket       what the total covers at `now_ms`
=========  =====================  ===========  ==========================================
``1h``     rolling, 60 min        1 minute     buckets starting in [b(now) - 60 min, b(now)]
``24h``    rolling, 24 h          1 hour       buckets starting in [b(now) - 24 h, b(now)]
``7d``     rolling, 7 days        1 hour       buckets starting in [b(now) - 7 d, b(now)]
``30d``    rolling, 30 days       1 hour       buckets starting in [b(now) - 30 d, b(now)]
``mtd``    calendar month (UTC)   1 hour       buckets starting in [1st of month 00:00, b(now)]
=========  =====================  ===========  ==========================================

where ``b(now)`` is the start of the bucket holding `now_ms`. Precision: a
rolling window covers between its nominal length and its length plus one
bucket (60-61 min; 24-25 h; 7 d-7 d 1 h; 30 d-30 d 1 h). Spend therefore
leaves a window up to one bucket LATE, never early: a budget may stay
exceeded up to a minute (1h) or an hour (others) longer than exact arithmetic
would say, and is never under-counted. Month-to-date is exact (months start on
an hour boundary in UTC).

`frees_at_ms` answers "when is this scope under its limit again if nothing
more is spent": the first moment enough old buckets have left the window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Final, Literal

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS

Window = Literal["1h", "24h", "7d", "30d", "mtd"]
WINDOWS: Final[tuple[Window, ...]] = ("1h", "24h", "7d", "30d", "mtd")
ROLLING_LENGTH_MS: Final[Mapping[str, int]] = {
    "1h": HOUR_MS,
    "24h": DAY_MS,
    "7d": 7 * DAY_MS,
    "30d": 30 * DAY_MS,
}
#: Bucket size per window. Only two granularities exist, so a scope keeps two bucket series.
BUCKET_MS: Final[Mapping[str, int]] = {
    "1h": MINUTE_MS,
    "24h": HOUR_MS,
    "7d": HOUR_MS,
    "30d": HOUR_MS,
    "mtd": HOUR_MS,
}
GRANULARITIES_MS: Final = (MINUTE_MS, HOUR_MS)

#: How far back each granularity must be kept to answer every window (with slack for
#: a month of 31 days and for buckets up to one bucket late).
RETENTION_MS: Final[Mapping[int, int]] = {MINUTE_MS: 2 * HOUR_MS, HOUR_MS: 32 * DAY_MS}


def bucket_start(t_ms: int, bucket_ms: int) -> int:
    """Start of the bucket of size `bucket_ms` that holds `t_ms` (floor, also before 1970)."""
    return t_ms - t_ms % bucket_ms


def month_start_ms(now_ms: int) -> int:
    """00:00 UTC on the first day of the month holding `now_ms`."""
    moment = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
    first = dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)
    return int(first.timestamp()) * 1000


def next_month_start_ms(now_ms: int) -> int:
    moment = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp()) * 1000


def month_label(now_ms: int) -> str:
    """`YYYY-MM` of the month holding `now_ms` (UTC): the period of an `mtd` window."""
    return dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC).strftime("%Y-%m")


def window_start_ms(window: Window, now_ms: int) -> int:
    """Start of the first bucket counted in `window` at `now_ms`."""
    if window == "mtd":
        return month_start_ms(now_ms)
    return bucket_start(now_ms, BUCKET_MS[window]) - ROLLING_LENGTH_MS[window]


def window_end_ms(window: Window, now_ms: int) -> int:
    """End (exclusive) of the last bucket counted: the end of the bucket holding `now_ms`."""
    size = BUCKET_MS[window]
    return bucket_start(now_ms, size) + size


def in_window(window: Window, t_ms: int, now_ms: int) -> bool:
    """Whether spend at event time `t_ms` counts in `window` at `now_ms`."""
    return window_start_ms(window, now_ms) <= t_ms < window_end_ms(window, now_ms)


def window_total(window: Window, buckets: Mapping[int, int], now_ms: int) -> int:
    """Sum of `buckets` (start -> amount, at this window's granularity) inside the window."""
    start, end = window_start_ms(window, now_ms), window_end_ms(window, now_ms)
    return sum(amount for b, amount in buckets.items() if start <= b < end)


def frees_at_ms(window: Window, buckets: Mapping[int, int], limit: int, now_ms: int) -> int | None:
    """When the window total drops below `limit` with no new spend; None if it already is.

    Rolling: bucket `b` leaves the window once `now >= b + length + bucket`, so the
    answer is that moment for the oldest buckets whose removal brings the total
    under the limit. Month to date: the next month's start (the total resets).
    """
    total = window_total(window, buckets, now_ms)
    if total < limit:
        return None
    if window == "mtd":
        return next_month_start_ms(now_ms)
    start, end = window_start_ms(window, now_ms), window_end_ms(window, now_ms)
    remaining = total
    for b in sorted(b for b in buckets if start <= b < end):
        remaining -= buckets[b]
        if remaining < limit:
            return b + ROLLING_LENGTH_MS[window] + BUCKET_MS[window]
    return end + ROLLING_LENGTH_MS[window]  # unreachable for limit > 0; safe upper bound


def add_to_buckets(
    buckets: dict[int, int], events: Iterable[tuple[int, int]], bucket_ms: int
) -> dict[int, int]:
    """Fold (event time, amount) pairs into `buckets` at granularity `bucket_ms` (in place)."""
    for t_ms, amount in events:
        b = bucket_start(t_ms, bucket_ms)
        buckets[b] = buckets.get(b, 0) + amount
    return buckets


def retained_from_ms(bucket_ms: int, now_ms: int) -> int:
    """Buckets of size `bucket_ms` starting before this can be dropped: no window needs them."""
    return bucket_start(now_ms, bucket_ms) - RETENTION_MS[bucket_ms]
