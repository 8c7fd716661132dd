"""tollway.budget-state materialised in memory: what enforcement reads (ingress and routers).

    in: tollway.budget-state (compacted), read from the beginning by a consumer
        with NO group (every ingress replica and every router holds the whole view)

`BudgetView.check(team_id, key_id, model, now_ms)` decides with
`enforcement.py` (pure) over the latest state per key: it returns an
`Admission` (maybe a downgraded model, maybe warnings) or raises
`BudgetExceeded` (429) / `ServiceUnavailable` (503, a hard budget whose state
is unknown or stale: fail closed). `spent_nano_usd(rules, team_id)` gives the
routers the spend each hard budget's state shows, for their reservations
(`reservations.py`). Until the view has caught up with the topic's end offsets
seen at start it is not `ready`, and every state counts as unknown, so hard
budgets refuse rather than guess. Without budgets, `check` admits at once and
never consults the view.

`FixedBudgetView` is the in-package fake: the same decisions over states a test
hands in, no broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import codec, topics
from schemas.errors import CorruptRecord
from schemas.records import BudgetState
from schemas.settings import KafkaSettings
from workers.budget.config import BudgetRule, BudgetsConfig, load_budgets, state_key
from workers.budget.enforcement import Admission, admit
from workers.budget.partitioning import usage_partition
from workers.budget.reservations import state_spent

log = logging.getLogger("tollway.budget.view")

DEFAULT_STALE_AFTER_S = 10.0
"""A budget state (or its partition's heartbeat) older than this is unknown."""


class EnforcementSettings(BaseSettings):
    """Budget enforcement in the ingress and the routers (env prefix `TOLLWAY_ENFORCEMENT_`)."""

    model_config = SettingsConfigDict(
        env_prefix="TOLLWAY_ENFORCEMENT_", frozen=True, extra="ignore", populate_by_name=True
    )

    budgets_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("TOLLWAY_BUDGETS_FILE", "TOLLWAY_ENFORCEMENT_BUDGETS_FILE"),
        description="YAML budgets (workers/budget/config.py), the budget processor's file; "
        "none or empty = no enforcement and no cost on the request path.",
    )
    stale_after_s: float = Field(
        default=DEFAULT_STALE_AFTER_S,
        gt=0,
        description="A budget state (and its partition heartbeat) older than this is "
        "unknown: hard budgets fail closed (503).",
    )
    ready_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Routers: how long to wait at start for the view to catch up before "
        "consuming (the ingress reports not-ready on /readyz meanwhile).",
    )

    def load(self) -> BudgetsConfig:
        return load_budgets(self.budgets_file)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class BudgetView:
    """Latest `BudgetState` per key, kept current by a background consumer."""

    def __init__(
        self,
        kafka: KafkaSettings,
        config: BudgetsConfig,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.kafka = kafka
        self.config = config
        self.stale_after_ms = int(stale_after_s * 1000)
        self.clock_ms = clock_ms
        self.states: dict[str, BudgetState] = {}
        self._ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """True once every state present at start has been read."""
        return self._ready.is_set()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.kafka.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=self.kafka.request_timeout_ms,
        )
        await consumer.start()
        self._consumer = consumer
        tps = [
            TopicPartition(topics.BUDGET_STATE.name, p)
            for p in range(topics.BUDGET_STATE.partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        self._task = asyncio.create_task(self._run(consumer, ends), name="budget-view")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def wait_ready(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        return self.ready

    async def _run(self, consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> None:
        waiting = {tp: end for tp, end in ends.items() if end > 0}
        if not waiting:
            self._ready.set()
        while True:
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=5_000)
            except KafkaError as exc:  # the consumer reconnects by itself; states age meanwhile
                log.warning("budget view: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batch.items():
                for record in records:
                    self._apply(record.key, record.value)
                if tp in waiting and records and records[-1].offset + 1 >= waiting[tp]:
                    del waiting[tp]
            if waiting and not batch:
                for tp in list(waiting):  # compaction can leave the end offset unreachable
                    if await consumer.position(tp) >= waiting[tp]:
                        del waiting[tp]
            if not waiting and not self._ready.is_set():
                log.info("budget view ready: %d states", len(self.states))
                self._ready.set()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode()
        if value is None:
            self.states.pop(name, None)
            return
        try:
            self.states[name] = codec.decode("budget_state", value)
        except CorruptRecord as exc:
            log.warning("budget view: skipping %s: %s", name, exc)

    def heartbeat_ms(self, team_id: str) -> int | None:
        """`updated_at_ms` of the heartbeat of the processor that owns `team_id`'s partition."""
        partition = usage_partition(team_id)
        state = self.states.get(state_key("global", f"partition-{partition}", "1h"))
        return None if state is None else state["updated_at_ms"]

    def check(
        self, team_id: str, key_id: str | None, model: str, now_ms: int | None = None
    ) -> Admission:
        """Admit, downgrade or refuse a request (raises BudgetExceeded / ServiceUnavailable)."""
        if not self.config.budgets:
            return Admission(model)
        ready = self.ready
        return admit(
            team_id=team_id,
            key_id=key_id,
            model=model,
            config=self.config,
            states=self.states if ready else {},
            owner_updated_ms=self.heartbeat_ms(team_id) if ready else None,
            now_ms=self.clock_ms() if now_ms is None else now_ms,
            stale_after_ms=self.stale_after_ms,
        )

    def spent_nano_usd(
        self, rules: Sequence[BudgetRule], team_id: str, now_ms: int
    ) -> dict[str, int]:
        """Spend per rule (`state_key`) as the states show it; raises like `check` when a
        state is unknown (503) or exceeded (429). See `reservations.state_spent`."""
        ready = self.ready
        return state_spent(
            rules,
            self.states if ready else {},
            owner_updated_ms=self.heartbeat_ms(team_id) if ready else None,
            now_ms=now_ms,
            stale_after_ms=self.stale_after_ms,
        )


class FixedBudgetView(BudgetView):
    """A `BudgetView` over states handed in (tests, tools): ready at once, no broker."""

    def __init__(
        self,
        config: BudgetsConfig,
        states: Mapping[str, BudgetState] | None = None,
        *,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        super().__init__(
            KafkaSettings(bootstrap="unused:0"),
            config,
            stale_after_s=stale_after_s,
            clock_ms=clock_ms,
        )
        self.states.update(states or {})
        self._ready.set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
