"""Budget processor wiring: tollway.usage -> windowed spend per scope -> budget state.

    in:  tollway.usage               (faust app / consumer group `tollway-budget`)
    out: tollway.budget-state        compacted, key `<scope_type>:<scope_id>:<window>`
         tollway.budget-events       threshold crossings (50/80/100 %), stable event ids
         tollway.dead-letters        usage records that cannot be decoded
    own: <app id>-budget-changelog   the ledger (workers/budget/ledger.py), 6 partitions
         <app id>-global-chunks      partial-global chunks + heartbeats -> the global agent
         <app id>-global-changelog   the global agent's ledger, 1 partition

Usage is keyed by team, so the partition that holds a team owns every scope of
that team (team, its keys, its models) and the agent `budget-usage` keeps them
in one changelog-backed table. The global scope spans partitions: each
partition keeps its share (`global:partition-<p>`) and forwards the changed
chunks to the single-partition agent `budget-global`, which sums them.

Guarantee: effectively exactly-once totals over at-least-once delivery
(ledger.py): replays are skipped by per-chunk offsets, duplicate usage ids by a
seen-set over `dedup_horizon_s` of event time. The per-chunk offsets are sound
only if each partition's records arrive in order without gaps: `batch_agent`
(workers/faust_app.py, workers/delivery.py) hands this agent nothing past a
record faust failed to deliver (docs/decisions/0016). A batch's table writes,
states and forwards are all acknowledged by Kafka before its events are acked to
faust (whose commit follows); a failure stops the process without acking.

Every `tick_s` the processor re-emits the state of every budgeted scope it
owns at wall-clock now (spend ages out of rolling windows without new usage)
and a heartbeat per owned partition (`global:partition-<p>:1h`) whose
`updated_at_ms` is the partition's processing watermark (freshness.py):
enforcement fails closed on hard budgets when it gets old.

Run: `python -m workers.budget.agent` or `run_budget_processor()` (settings:
`TOLLWAY_KAFKA_BOOTSTRAP`, `TOLLWAY_BUDGETS_FILE`, `TOLLWAY_BUDGET_*`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from functools import partial
from types import MappingProxyType
from typing import Any

import faust
from faust.types import TP

from schemas import codec, topics
from schemas.errors import CorruptRecord
from schemas.records import BudgetEvent, BudgetState
from schemas.settings import KafkaSettings
from workers.budget.config import BudgetsConfig, load_budgets, state_key
from workers.budget.freshness import Freshness
from workers.budget.ledger import (
    GLOBAL_SCOPE,
    LedgerBatch,
    Value,
    expired_keys,
    newer_chunk,
    parse_scope,
    partial_global_scope,
    scope_of_key,
)
from workers.budget.partitioning import usage_partition
from workers.budget.settings import BudgetSettings
from workers.budget.states import Scope
from workers.faust_app import (
    ChangelogTable,
    Outgoing,
    batch_agent,
    changelog_topic,
    create_processor_app,
    dead_letter,
    fatal,
    internal_topic,
    raw_topic,
    run_processor,
    send_all,
)
from workers.telemetry.metrics import budget_metrics, dead_letter_metrics, start_metrics
from workers.telemetry.tracing import set_attributes, start_span

log = logging.getLogger("tollway.budget")

SLOW_S = 0.5
"""A batch or tick taking longer than this is logged: it delays every budget state."""


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def global_chunks_topic(settings: BudgetSettings) -> topics.Topic:
    """The processor's private topic into the global agent (created before the worker starts:
    a topic faust declares itself is only subscribed after a metadata refresh, minutes later).
    """
    return topics.Topic(
        f"{settings.app_id}-global-chunks",
        partitions=1,
        config=MappingProxyType({"retention.ms": str(24 * 3_600_000)}),
        doc="Partial-global chunks and partition heartbeats -> the budget-global agent.",
    )


def state_record(state: BudgetState) -> Outgoing:
    key = state_key(state["scope_type"], state["scope_id"], state["window"])
    return topics.BUDGET_STATE.name, key.encode(), codec.encode("budget_state", state), None, None


def event_record(event: BudgetEvent) -> Outgoing:
    key = state_key(event["scope_type"], event["scope_id"], event["window"])
    return topics.BUDGET_EVENTS.name, key.encode(), codec.encode("budget_event", event), None, None


def _count_outcomes(outcomes: dict[str, int]) -> None:
    """Metrics of a batch Kafka has acknowledged: outcomes of its usage records."""
    for outcome, count in outcomes.items():
        if outcome == "dead":
            dead_letter_metrics().published.labels(topics.DEAD_LETTERS.name).inc(count)
        else:
            budget_metrics().usage.labels(outcome).inc(count)


class BudgetProcessor:
    """State and behaviour of one budget-processor process (both agents and the timer).

    States are emitted at two speeds: a scope with a budget gets its states with the
    batch that changed it (enforcement reads them); every other scope is marked dirty
    and emitted by the next tick, so a burst of usage over many keys costs one state
    per scope and window per tick rather than per batch.
    """

    def __init__(self, app: faust.App, config: BudgetsConfig, settings: BudgetSettings) -> None:
        self.app = app
        self.config = config
        self.settings = settings
        self.partitions = topics.USAGE.partitions
        self.ledger = ChangelogTable(app, "budget", self.partitions, settings.app_id)
        self.global_ledger = ChangelogTable(app, "global", 1, settings.app_id)
        self.global_topic_name = global_chunks_topic(settings).name
        self.global_topic = internal_topic(app, self.global_topic_name, 1)
        self.budgeted = {parse_scope(s) for s in config.scopes}
        self.freshness = Freshness()
        self.watermarks: dict[int, int] = {}
        self.scope_partition: dict[Scope, int] = {}
        self.dirty: dict[Scope, int] = {}
        self.swept: frozenset[int] = frozenset()
        self.heartbeats: dict[int, tuple[int, int]] = {}  # partition -> (fresh, watermark)
        self.counts = {
            "usage": 0,
            "applied": 0,
            "replayed": 0,
            "duplicate": 0,
            "late": 0,
            "dead": 0,
        }
        self.last_prune_ms = 0
        self.last_info_ms = 0
        self.last_late_log_ms = 0

    def _states(
        self, read: Any, partition: int, scopes: list[Scope], now: int, **kwargs: Any
    ) -> tuple[list[Outgoing], dict[str, Value]]:
        """State and threshold-event records of `scopes`, and the level writes they imply."""
        watermark = self.watermarks.get(partition, 0)
        batch = LedgerBatch(read, partition, now, watermark_ms=watermark)
        states, crossed = batch.states(
            self.config,
            now_ms=max(now, watermark),
            updated_at_ms=self.freshness.fresh_as_of(partition) or 0,
            scopes=scopes,
            **kwargs,
        )
        records = [state_record(s) for s in states] + [event_record(e) for e in crossed]
        return records, batch.writes

    # --- usage --------------------------------------------------------------------------

    async def process_usage(self, events: Sequence[Any]) -> None:
        now = wall_ms()
        by_partition: dict[int, list[Any]] = {}
        for event in events:
            by_partition.setdefault(event.message.partition, []).append(event)
        outgoing: list[Outgoing] = []
        done: list[tuple[int, int]] = []
        outcomes: dict[str, int] = {}  # for the metrics, once Kafka has the batch
        for partition, part_events in sorted(by_partition.items()):
            batch = LedgerBatch(
                self.ledger.read,
                partition,
                now,
                watermark_ms=self.watermarks.get(partition, 0),
                dedup_horizon_ms=int(self.settings.dedup_horizon_s * 1000),
            )
            for event in sorted(part_events, key=lambda e: e.message.offset):
                self.counts["usage"] += 1
                try:
                    usage = codec.decode("usage", event.value)
                except CorruptRecord as exc:
                    self.counts["dead"] += 1
                    outcomes["dead"] = outcomes.get("dead", 0) + 1
                    outgoing.append(dead_letter(event, exc))
                    continue
                with start_span(  # a child of the cost processor's span (0019)
                    f"process {topics.USAGE.name}",
                    kind="consumer",
                    headers=event.message.headers,
                    attributes={"tollway.request_id": usage["request_id"]},
                ):
                    outcome = batch.apply(event.message.offset, usage)
                    set_attributes({"tollway.budget_outcome": outcome})
                self.counts[outcome] += 1
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            self.watermarks[partition] = batch.watermark_ms
            if batch.late:
                self.counts["late"] += batch.late
                if now - self.last_late_log_ms >= 60_000:
                    self.last_late_log_ms = now
                    log.warning(
                        "usage older than the dedup horizon (%d so far, e.g. partition %d): "
                        "counted without a duplicate check",
                        self.counts["late"],
                        partition,
                    )
            urgent = []
            for scope in batch.touched:
                self.scope_partition[scope] = partition
                if scope in self.budgeted:
                    urgent.append(scope)
                elif scope[0] != "global":  # partial globals report through the heartbeat
                    self.dirty[scope] = partition
            records, levels = self._states(batch.get, partition, sorted(urgent), now)
            batch.writes.update(levels)
            outgoing.extend(records)
            outgoing.extend(self._forward_partial_global(batch))
            outgoing.extend(self.ledger.write(partition, batch.writes))
            done.append((partition, max(e.message.offset for e in part_events)))
        await send_all(self.app, outgoing)
        for partition, offset in done:
            self.freshness.processed(partition, offset)
        _count_outcomes(outcomes)

    def _forward_partial_global(self, batch: LedgerBatch) -> list[Outgoing]:
        """Every partial-global chunk the batch touched, as it stands (replays included)."""
        prefix = f"|{partial_global_scope(batch.partition)[0]}:"
        forwards: list[Outgoing] = []
        for key in sorted(batch.touched_chunks):
            if prefix not in key:
                continue
            value = batch.get(key)
            if value is not None:
                payload = json.dumps({"k": key, "v": value}).encode()
                forwards.append((self.global_topic_name, key.encode(), payload, None, None))
        return forwards

    # --- global -------------------------------------------------------------------------

    async def process_global(self, events: Sequence[Any]) -> None:
        now = wall_ms()
        writes: dict[str, Value] = {}
        for event in events:
            message = json.loads(event.value)
            if "hb" in message:
                self.heartbeats[int(message["hb"])] = (int(message["fresh"]), int(message["wm"]))
                continue
            key, value = message["k"], message["v"]
            if newer_chunk(writes.get(key) or self.global_ledger.read(key), value):
                writes[key] = value
        await self._emit_global(writes, now)

    async def _emit_global(self, writes: dict[str, Value], now: int) -> None:
        fresh = [self.heartbeats.get(p, (0, 0)) for p in range(self.partitions)]
        batch = LedgerBatch(self.global_ledger.read, 0, now, writes=writes)
        batch.watermark_ms = max(wm for _, wm in fresh)
        states, crossed = batch.states(
            self.config,
            now_ms=max(now, batch.watermark_ms),
            updated_at_ms=min(f for f, _ in fresh),
            scopes=[GLOBAL_SCOPE],
            usage_partitions=self.partitions,
        )
        outgoing = [state_record(s) for s in states] + [event_record(e) for e in crossed]
        outgoing.extend(self.global_ledger.write(0, batch.writes))
        await send_all(self.app, outgoing)

    # --- the tick -----------------------------------------------------------------------

    def owned_partitions(self) -> list[int]:
        return sorted(
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == topics.USAGE.name
        )

    def owner_of(self, scope: Scope) -> int | None:
        kind, ident = scope
        if kind == "team":
            return usage_partition(ident, self.partitions)
        if kind == "model":
            return usage_partition(ident.split("/", 1)[0], self.partitions)
        return self.scope_partition.get(scope)

    async def tick(self) -> None:
        """Heartbeats, budgeted states at wall-clock now, dirty states (see the module doc)."""
        if self.app.rebalancing or self.app.in_recovery:
            return
        now = wall_ms()
        owned = self.owned_partitions()
        for gone in set(self.watermarks) - set(owned):
            self.watermarks.pop(gone, None)
            self.freshness.forget(gone)
        if frozenset(owned) != self.swept:
            self.sweep(set(owned))
        info_due = now - self.last_info_ms >= self.settings.info_every_s * 1000
        flushed: set[int] = set()
        outgoing: list[Outgoing] = []
        for partition in owned:
            tp = TP(topics.USAGE.name, partition)
            if not self.freshness.knows(partition):
                position = await self.app.consumer.position(tp)
                if position is None:
                    continue
                self.freshness.start_at(partition, position)
            # The end offset from the latest fetch response: no broker round trip (the
            # consumer lives in faust's thread); at most one fetch wait (~0.5 s) behind.
            end = self.app.consumer.highwater(tp)
            if end is None:
                continue
            self.freshness.observe_end(partition, end, now)
            fresh = self.freshness.fresh_as_of(partition)
            if fresh is None:
                continue
            scopes = [partial_global_scope(partition)]
            scopes += [
                s for s in self.budgeted if s[0] != "global" and self.owner_of(s) == partition
            ]
            if info_due:
                scopes += [s for s, p in self.dirty.items() if p == partition]
                flushed.add(partition)
            records, levels = self._states(self.ledger.read, partition, scopes, now)
            outgoing.extend(records)
            outgoing.extend(self.ledger.write(partition, levels))
            watermark = self.watermarks.get(partition, 0)
            heartbeat = {"hb": partition, "fresh": fresh, "wm": watermark}
            outgoing.append(
                (self.global_topic_name, None, json.dumps(heartbeat).encode(), None, None)
            )
        if info_due:
            self.last_info_ms = now
            self.dirty = {s: p for s, p in self.dirty.items() if p not in flushed}
        await send_all(self.app, outgoing)
        if self.owns_global():
            await self._emit_global({}, now)
        if now - self.last_prune_ms >= self.settings.prune_every_s * 1000:
            self.last_prune_ms = now
            await self.prune(now, set(owned))

    def owns_global(self) -> bool:
        return any(
            tp.topic == self.global_topic_name for tp in self.app.assignor.assigned_actives()
        )

    def sweep(self, owned: set[int]) -> None:
        """After an assignment: learn which partition owns each scope, and mark every local
        scope dirty so its state is re-emitted (a state lost in a crash is repaired)."""
        for key in self.ledger.keys():  # noqa: SIM118  # a LedgerTable, not a dict
            scope = scope_of_key(key)
            value = self.ledger.read(key)
            if scope is None or value is None or int(value["p"]) not in owned:
                continue
            self.scope_partition[scope] = int(value["p"])
            if scope[0] != "global":
                self.dirty[scope] = int(value["p"])
        self.swept = frozenset(owned)

    async def prune(self, now: int, owned: set[int]) -> None:
        """Drop buckets no window needs and seen-slots past the dedup horizon."""
        horizon_ms = int(self.settings.dedup_horizon_s * 1000)
        deletes: list[Outgoing] = []
        for key in expired_keys(
            self.ledger.keys(),
            now_ms=now,
            watermarks_ms=self.watermarks,
            dedup_horizon_ms=horizon_ms,
        ):
            value = self.ledger.read(key)
            if value is not None and int(value["p"]) in owned:
                deletes.append(self.ledger.delete(int(value["p"]), key))
        if self.owns_global():
            old = expired_keys(self.global_ledger.keys(), now_ms=now, watermarks_ms={})
            deletes.extend(self.global_ledger.delete(0, key) for key in list(old))
        await send_all(self.app, deletes)
        log.info("budget processor: %s; pruned %d keys", self.counts, len(deletes))


def build_budget_app(
    kafka: KafkaSettings, settings: BudgetSettings, config: BudgetsConfig
) -> faust.App:
    """The budget processor's faust app: the usage agent, the global agent, two timers."""
    app = create_processor_app(kafka.bootstrap, settings)
    processor = BudgetProcessor(app, config, settings)
    batch_agent(
        app,
        raw_topic(app, topics.USAGE),
        name="budget-usage",
        settings=settings,
        handle=processor.process_usage,
        what="budgeting a batch",
        slow_log=log,
        slow_s=SLOW_S,
    )
    batch_agent(
        app,
        processor.global_topic,
        name="budget-global",
        settings=settings,
        handle=processor.process_global,
        what="aggregating global spend",
    )

    async def tick() -> None:
        started = time.perf_counter()
        try:
            await processor.tick()
        except Exception as exc:  # noqa: BLE001  # a broken timer would silently go stale
            fatal("budget tick failed", exc)
        took_s = time.perf_counter() - started
        if took_s > SLOW_S:
            log.warning("slow tick: %.2fs (%d dirty scopes)", took_s, len(processor.dirty))

    async def started() -> None:
        log.info("budget processor: %d budgets, unpriced=%s", len(config.budgets), config.unpriced)

    app.timer(interval=settings.tick_s, name="budget-tick")(tick)
    app.task(started)
    return app


def run_budget_processor(
    kafka: KafkaSettings | None = None, settings: BudgetSettings | None = None
) -> None:
    """Run the budget processor in this process until SIGTERM/SIGINT (never returns)."""
    kafka = kafka or KafkaSettings()
    settings = settings or BudgetSettings()
    config = load_budgets(settings.budgets_file)
    start_metrics(
        "budget-processor",
        settings.metrics_port,
        bootstrap=kafka.bootstrap,
        lag_groups=(settings.app_id,),  # the faust app id is its consumer group
    )
    run_processor(
        kafka.bootstrap,
        settings,
        partial(build_budget_app, kafka, settings, config),
        own_topics=(
            global_chunks_topic(settings),
            changelog_topic(settings.app_id, "budget", topics.USAGE.partitions),
            changelog_topic(settings.app_id, "global", 1),
        ),
    )


if __name__ == "__main__":
    run_budget_processor()
