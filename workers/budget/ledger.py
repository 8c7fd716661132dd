"""The budget processor's state as plain dicts, and what a batch of usage does to it.

Pure: the wiring (`agent.py`) hands in a read function over its changelog-backed
table and writes back `LedgerBatch.writes`; windows come from `windows.py`.
docs/decisions/0005 explains why the state has this shape.

Table layout (one key space; every value carries `p`, the `tollway.usage`
partition that owns it, which is also its changelog partition):

================================  ==================================================
key                               value
================================  ==================================================
``m|<scope>|<hour start>``        minute buckets of one hour: ``{"o", "p", "b", "u"}``
``h|<scope>|<day start>``         hour buckets of one UTC day: ``{"o", "p", "b", "u"}``
``s|<partition>|<second>``        usage ids seen with that event second: ``{"p", "ids"}``
``l|<scope>|<window>``            highest threshold reached (50/80/100): ``{"p", "v"}``
================================  ==================================================

``b`` maps a bucket start to nano-USD, ``u`` to a count of unpriced calls, and
``o`` is the last `tollway.usage` offset applied to that chunk.

Exactly-once effect on at-least-once delivery, in two layers:

* the processor's own replays (it crashed after writing state, before committing
  its input offsets): a chunk skips any record whose offset is ``<= o``. A chunk
  is a single table value, so its sums and ``o`` are written atomically. This
  needs the records of a partition applied in offset order WITHOUT GAPS (a
  record missing while later ones are applied would be skipped for good): the
  wiring guarantees it (workers/delivery.py, docs/decisions/0016).
* duplicates in the input (the cost processor priced an attempt twice after a
  crash): the usage id's 64-bit hash is remembered in the slot of its event
  second with the offset that first carried it; the same id at a LATER offset is
  a duplicate. Slots are kept for `dedup_horizon_ms` of event time behind the
  partition's watermark. The same id at the SAME offset is the processor's own
  replay and falls through to the chunk check, so a crash between writing a slot
  and writing the chunks cannot lose the record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from schemas.records import BudgetEvent, BudgetState, UsageRecord
from workers.budget.config import GLOBAL_SCOPE_ID, BudgetsConfig, scope_string
from workers.budget.states import Scope, Totals, crossings, evaluate
from workers.budget.windows import (
    BUCKET_MS,
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    WINDOWS,
    Window,
    bucket_start,
    retained_from_ms,
    window_start_ms,
    window_total,
)

SLOT_MS: Final = 1_000
"""Event-time width of one seen-set slot."""
DEFAULT_DEDUP_HORIZON_MS: Final = 5 * 60_000
"""How far behind a partition's watermark (event time) duplicates are still recognised."""
FUTURE_SKEW_MS: Final = 60_000
"""Event times beyond wall clock + this do not move the watermark (a skewed router clock)."""

#: Chunk size per bucket granularity: an hour of minutes, a day of hours.
CHUNK_MS: Final[Mapping[int, int]] = {MINUTE_MS: HOUR_MS, HOUR_MS: DAY_MS}
_PREFIX: Final[Mapping[int, str]] = {MINUTE_MS: "m", HOUR_MS: "h"}

Value = dict[str, Any]
Reader = Callable[[str], "Value | None"]
Outcome = Literal["applied", "replayed", "duplicate"]


def partial_global_scope(partition: int) -> Scope:
    """The spend of every team on one usage partition: a part of the global total."""
    return ("global", f"partition-{partition}")


GLOBAL_SCOPE: Final[Scope] = ("global", GLOBAL_SCOPE_ID)


def scopes_of(usage: UsageRecord, partition: int) -> tuple[Scope, ...]:
    """Every scope one usage record spends against (tags arrive with tenancy)."""
    team = usage["team_id"]
    scopes: list[Scope] = [("team", team), ("model", f"{team}/{usage['requested_model']}")]
    if usage["key_id"]:
        scopes.append(("key", usage["key_id"]))
    scopes.append(partial_global_scope(partition))
    return tuple(scopes)


def usage_hash(usage_id: str) -> str:
    return hashlib.blake2b(usage_id.encode(), digest_size=8).hexdigest()


def chunk_key(bucket_ms: int, scope: Scope, t_ms: int) -> str:
    chunk = CHUNK_MS[bucket_ms]
    return f"{_PREFIX[bucket_ms]}|{scope_string(*scope)}|{bucket_start(t_ms, chunk)}"


def seen_key(partition: int, t_ms: int) -> str:
    return f"s|{partition}|{t_ms // SLOT_MS}"


def level_key(scope: Scope, window: str) -> str:
    return f"l|{scope_string(*scope)}|{window}"


def parse_scope(text: str) -> Scope:
    if text == "global":
        return GLOBAL_SCOPE
    kind, _, ident = text.partition(":")
    return kind, ident  # type: ignore[return-value]  # written by scope_string only


def read_buckets(
    read: Reader, scope: Scope, bucket_ms: int, from_ms: int, to_ms: int
) -> tuple[dict[int, int], dict[int, int]]:
    """(nano-USD, unpriced calls) per bucket start in [from_ms, to_ms), merged from chunks."""
    money: dict[int, int] = {}
    unpriced: dict[int, int] = {}
    chunk = CHUNK_MS[bucket_ms]
    name = scope_string(*scope)
    for start in range(bucket_start(from_ms, chunk), to_ms, chunk):
        value = read(f"{_PREFIX[bucket_ms]}|{name}|{start}")
        if value is None:
            continue
        for b, amount in value["b"].items():
            money[int(b)] = amount
        for b, count in value["u"].items():
            unpriced[int(b)] = count
    return money, unpriced


def scope_totals(read: Reader, parts: Iterable[Scope], now_ms: int) -> dict[Window, Totals]:
    """Totals for every window of the sum of `parts` (one scope, or the partial globals)."""
    parts = list(parts)
    by_granularity: dict[int, tuple[dict[int, int], dict[int, int]]] = {}
    for bucket_ms in (MINUTE_MS, HOUR_MS):
        earliest = min(window_start_ms(w, now_ms) for w in WINDOWS if BUCKET_MS[w] == bucket_ms)
        end = bucket_start(now_ms, bucket_ms) + bucket_ms
        money: dict[int, int] = {}
        unpriced: dict[int, int] = {}
        for part in parts:
            part_money, part_unpriced = read_buckets(read, part, bucket_ms, earliest, end)
            for b, v in part_money.items():
                money[b] = money.get(b, 0) + v
            for b, v in part_unpriced.items():
                unpriced[b] = unpriced.get(b, 0) + v
        by_granularity[bucket_ms] = (money, unpriced)
    totals: dict[Window, Totals] = {}
    for window in WINDOWS:
        money, unpriced = by_granularity[BUCKET_MS[window]]
        totals[window] = Totals(
            window_total(window, money, now_ms),
            window_total(window, unpriced, now_ms),
            money,
            unpriced,
        )
    return totals


@dataclass
class LedgerBatch:
    """Pending writes of one batch of one partition, over a read-only view of the table."""

    read: Reader
    partition: int
    wall_ms: int
    watermark_ms: int = 0
    writes: dict[str, Value] = field(default_factory=dict)
    touched: set[Scope] = field(default_factory=set)
    touched_chunks: set[str] = field(default_factory=set)
    counts: dict[Outcome, int] = field(
        default_factory=lambda: {"applied": 0, "replayed": 0, "duplicate": 0}
    )
    last_offset: int = -1
    dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS
    late: int = 0
    """Records older than the dedup horizon: counted, but a duplicate among them would be too."""

    def get(self, key: str) -> Value | None:
        if key in self.writes:
            return self.writes[key]
        return self.read(key)

    def _mutable(self, key: str, fresh: Callable[[], Value]) -> Value:
        if key in self.writes:
            return self.writes[key]
        current = self.read(key)
        if current is None:
            value = fresh()
        else:  # copy-on-write: the table's object changes only when the batch is flushed
            value = {k: dict(v) if isinstance(v, dict) else v for k, v in current.items()}
        self.writes[key] = value
        return value

    def apply(self, offset: int, usage: UsageRecord) -> Outcome:
        """Fold one usage record (at `offset` of this partition) into the state."""
        self.last_offset = max(self.last_offset, offset)
        t_ms = usage["occurred_at_ms"]
        if t_ms <= self.wall_ms + FUTURE_SKEW_MS:
            self.watermark_ms = max(self.watermark_ms, t_ms)
        if t_ms < self.watermark_ms - self.dedup_horizon_ms:
            self.late += 1
        outcome = self._apply(offset, usage, t_ms)
        self.counts[outcome] += 1
        return outcome

    def _apply(self, offset: int, usage: UsageRecord, t_ms: int) -> Outcome:
        digest = usage_hash(usage["usage_id"])
        slot_key = seen_key(self.partition, t_ms)
        slot = self.get(slot_key)
        first_offset = None if slot is None else slot["ids"].get(digest)
        if first_offset is not None and first_offset < offset:
            return "duplicate"
        if first_offset is None:
            self._mutable(slot_key, lambda: {"p": self.partition, "ids": {}})["ids"][digest] = (
                offset
            )
        scopes = scopes_of(usage, self.partition)
        self.touched.update(scopes)
        unpriced = usage["cost_status"] == "unpriced"
        applied = False
        for scope in scopes:
            for bucket_ms in (MINUTE_MS, HOUR_MS):
                key = chunk_key(bucket_ms, scope, t_ms)
                self.touched_chunks.add(key)
                chunk = self.get(key)
                if chunk is not None and offset <= chunk["o"]:
                    continue  # applied before a crash; the chunk already holds it
                value = self._mutable(key, lambda: {"o": -1, "p": self.partition, "b": {}, "u": {}})
                bucket = str(bucket_start(t_ms, bucket_ms))
                value["o"] = offset
                value["b"][bucket] = value["b"].get(bucket, 0) + usage["cost_nano_usd"]
                if unpriced:
                    value["u"][bucket] = value["u"].get(bucket, 0) + 1
                applied = True
        return "applied" if applied else "replayed"

    def states(
        self,
        config: BudgetsConfig,
        *,
        now_ms: int,
        updated_at_ms: int,
        scopes: Iterable[Scope] | None = None,
        usage_partitions: int = 0,
    ) -> tuple[list[BudgetState], list[BudgetEvent]]:
        """Budget-state records of the touched (or given) scopes, and threshold events.

        Partial-global scopes get their `1h` record only: it reports the partition's
        spend and, through `updated_at_ms`, that its owner is alive (enforcement's
        heartbeat). The global scope sums the partial globals of `usage_partitions`
        partitions (the global aggregator's table holds them). Threshold levels are
        written into `writes`.
        """
        out: list[BudgetState] = []
        events: list[BudgetEvent] = []
        for scope in sorted(self.touched if scopes is None else scopes):
            partial = scope[0] == "global" and scope != GLOBAL_SCOPE
            parts = (
                [partial_global_scope(p) for p in range(usage_partitions)]
                if scope == GLOBAL_SCOPE
                else [scope]
            )
            totals = scope_totals(self.get, parts, now_ms)
            for window in ("1h",) if partial else WINDOWS:
                rule = None if partial else config.rule(scope_string(*scope), window)
                state = evaluate(
                    scope,
                    window,
                    totals[window],
                    rule,
                    unpriced_fail_closed=config.unpriced == "fail_closed",
                    now_ms=now_ms,
                    watermark_ms=self.watermark_ms,
                    updated_at_ms=updated_at_ms,
                )
                out.append(state)
                if rule is not None:
                    events.extend(self.track_level(scope, state, now_ms))
        return out, events

    def track_level(self, scope: Scope, state: BudgetState, now_ms: int) -> list[BudgetEvent]:
        key = level_key(scope, state["window"])
        stored = self.get(key)
        previous = 0 if stored is None else int(stored["v"])
        level, events = crossings(state, previous, now_ms)
        if level != previous:
            self._mutable(key, lambda: {"p": self.partition, "v": 0})["v"] = level
        return events


def expired_keys(
    keys: Iterable[str],
    *,
    now_ms: int,
    watermarks_ms: Mapping[int, int],
    dedup_horizon_ms: int = DEFAULT_DEDUP_HORIZON_MS,
) -> Iterator[str]:
    """Keys no window or dedup check will read again (levels are kept: tiny, one per budget)."""
    keep_minutes = retained_from_ms(MINUTE_MS, now_ms)
    keep_hours = retained_from_ms(HOUR_MS, now_ms)
    for key in keys:
        kind, _, rest = key.partition("|")
        _, _, start_text = rest.rpartition("|")
        if (kind == "m" and int(start_text) + HOUR_MS <= keep_minutes) or (
            kind == "h" and int(start_text) + DAY_MS <= keep_hours
        ):
            yield key
        elif kind == "s":
            partition = int(rest.partition("|")[0])
            watermark = watermarks_ms.get(partition)
            if watermark is not None and (int(start_text) + 1) * SLOT_MS <= (
                watermark - dedup_horizon_ms
            ):
                yield key


def scope_of_key(key: str) -> Scope | None:
    """The scope a chunk or level key belongs to (None for seen-set slots)."""
    kind, _, rest = key.partition("|")
    if kind not in ("m", "h", "l"):
        return None
    return parse_scope(rest.rpartition("|")[0])


def newer_chunk(current: Value | None, incoming: Value) -> bool:
    """Whether a forwarded partial-global chunk replaces the stored one (offsets only grow)."""
    return current is None or int(incoming["o"]) >= int(current["o"])
