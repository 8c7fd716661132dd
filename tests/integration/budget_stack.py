"""A budget-enforcing Tollway on a real broker, for the acceptance test and bench/budget_lag.py.

    client --HTTP--> ingress (process, TOLLWAY_BUDGETS_FILE)
                 --> tollway.requests.interactive (keyed by team: the team has a hard budget)
                 --> router (IN this process: its reservation ledger can be inspected)
                 --> mock provider (in this process, loopback)
                 --> tollway.attempts --> cost processor (process) --> tollway.usage
                 --> budget processor (process) --> tollway.budget-state --> ingress + router

One team (`default`, the ingress's only team until tenancy) with one hard budget
over `1h`. The model `mock-budget` gets its own price through a catalogue
override file, given to the cost processor and the router alike, so one request
costs a known amount. Every run uses fresh faust app ids and a fresh router group
that starts at the END of the request topics; faust's topics are deleted at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas import codec, topics
from schemas.records import Attempt, BudgetState, UsageRecord
from schemas.routes import Deployment, ModelRoute, RoutesConfig
from schemas.settings import KafkaSettings
from tests.integration.processes import ModuleProcess
from workers.budget.partitioning import usage_partition
from workers.budget.view import EnforcementSettings
from workers.cost.settings import CostSettings
from workers.providers.mock.behaviour import MockSettings
from workers.providers.mock.server import build_app as build_mock_app
from workers.providers.registry import build_registry
from workers.router.budgets import AttemptBudgets, build_budgets
from workers.router.consumer import Router
from workers.router.execution import Executor
from workers.router.settings import RouterSettings

TEAM = "default"
MODEL = "mock-budget"
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Tail:
    """Everything written to usage, attempts, budget-state and requests after `start()`."""

    bootstrap: str
    usage: list[UsageRecord] = field(default_factory=list)
    attempts: list[tuple[int, Attempt]] = field(default_factory=list)
    """(arrival in this process, wall ms; the attempt)."""
    states: dict[str, BudgetState] = field(default_factory=dict)
    request_keys: list[bytes | None] = field(default_factory=list)
    on_state: Callable[[str, BudgetState], None] | None = None
    consumer: Any = None
    task: asyncio.Task[None] | None = None

    async def start(self) -> Tail:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self.consumer.start()
        watched = (topics.USAGE, topics.ATTEMPTS, topics.BUDGET_STATE, topics.REQUESTS_INTERACTIVE)
        tps = [TopicPartition(t.name, p) for t in watched for p in range(t.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            arrived = now_ms()
            for tp, records in batch.items():
                for r in records:
                    if tp.topic == topics.USAGE.name:
                        self.usage.append(codec.decode("usage", r.value))
                    elif tp.topic == topics.ATTEMPTS.name:
                        self.attempts.append((arrived, codec.decode("attempt", r.value)))
                    elif tp.topic == topics.BUDGET_STATE.name:
                        state = codec.decode("budget_state", r.value)
                        self.states[r.key.decode()] = state
                        if self.on_state is not None:
                            self.on_state(r.key.decode(), state)
                    else:
                        self.request_keys.append(r.key)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()

    def usage_of(self, team: str) -> list[UsageRecord]:
        return [u for u in self.usage if u["team_id"] == team]


def canary_attempt(team: str) -> Attempt:
    t = now_ms()
    return {
        "request_id": f"req_canary_{uuid.uuid4().hex}",
        "attempt_id": f"{uuid.uuid4().hex[:16]}.1",
        "attempt": 1,
        "team_id": team,
        "key_id": None,
        "mode": "sync",
        "deployment": "mock",
        "provider": "openai",
        "model": "mock-canary",
        "started_at_ms": t - 5,
        "latency_ms": 5.0,
        "outcome": "ok",
        "http_status": 200,
        "error_type": None,
        "error_code": None,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "router_id": "canary",
    }


def canary_teams(run_id: str) -> list[str]:
    """One team per usage partition (never `default`), to establish every partition's position."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < topics.USAGE.partitions:
        team = f"canary-{run_id}-{n}"
        found.setdefault(usage_partition(team), team)
        n += 1
    return list(found.values())


async def commit_group_at_end(bootstrap: str, group: str, names: list[str]) -> None:
    """The group's next start reads only what is written after now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(t.name, p) for t in topics.ALL_TOPICS if t.name in names
            for p in range(t.partitions)
        ]  # fmt: skip
        consumer.assign(tps)
        await consumer.commit(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def delete_topics(bootstrap: str, prefixes: tuple[str, ...]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


@dataclass
class BudgetStack:
    """See the module docstring. `start()` returns once a request can be admitted."""

    bootstrap: str
    workdir: Path
    limit_usd: str = "5.00"
    input_usd_per_mtok: str = "10"
    output_usd_per_mtok: str = "900"
    mock_latency_ms: int = 20
    router_budgets: bool = True
    """False: the router runs without budgets (ingress-only enforcement, for comparison)."""
    stale_after_s: float = 30.0
    """Fail-closed bound of the views. Above the 10 s default: on a shared 2-core machine
    a starved budget processor's heartbeat ages past 10 s during a 1,000-request burst,
    and these runs measure reservations, not fail-closed (unit-tested)."""
    timings_s: dict[str, float] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    procs: list[ModuleProcess] = field(default_factory=list)
    tail: Tail | None = None
    budgets: AttemptBudgets | None = None
    router: Router | None = None
    url: str = ""
    _router_task: asyncio.Task[None] | None = None
    _mock: web.AppRunner | None = None

    @property
    def limit_nano_usd(self) -> int:
        from decimal import Decimal

        return int(Decimal(self.limit_usd) * 1_000_000_000)

    def _write_config(self) -> tuple[Path, Path]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        budgets = self.workdir / "budgets.yaml"
        budgets.write_text(
            f'- {{scope: "team:{TEAM}", window: 1h, limit_usd: "{self.limit_usd}"}}\n', "utf-8"
        )
        overrides = self.workdir / "prices.yaml"
        overrides.write_text(
            f'{MODEL}: {{provider: openai, input: "{self.input_usd_per_mtok}", '
            f'output: "{self.output_usd_per_mtok}"}}\n',
            "utf-8",
        )
        return budgets, overrides

    async def start(self) -> None:
        budgets_file, overrides = self._write_config()
        common = {
            "TOLLWAY_KAFKA_BOOTSTRAP": self.bootstrap,
            "TOLLWAY_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            "TOLLWAY_BUDGETS_FILE": str(budgets_file),
            "TOLLWAY_COST_PRICE_OVERRIDES_FILE": str(overrides),
            "TOLLWAY_ENFORCEMENT_STALE_AFTER_S": str(self.stale_after_s),
        }
        faust = {"TOLLWAY_COST_DATA_DIR": str(self.workdir / "faust")}
        cost = ModuleProcess(
            ["workers.cost.agent"],
            {**common, **faust, "TOLLWAY_COST_APP_ID": f"bs-cost-{self.run_id}",
             "TOLLWAY_COST_START_FROM": "latest", "TOLLWAY_COST_SESSION_TIMEOUT_S": "6"},
            self.workdir / "cost.log",
        )  # fmt: skip
        budget = ModuleProcess(
            ["workers.budget.agent"],
            {**common, "TOLLWAY_BUDGET_APP_ID": f"bs-budget-{self.run_id}",
             "TOLLWAY_BUDGET_DATA_DIR": str(self.workdir / "faust"),
             "TOLLWAY_BUDGET_START_FROM": "latest", "TOLLWAY_BUDGET_SESSION_TIMEOUT_S": "6"},
            self.workdir / "budget.log",
        )  # fmt: skip
        port = free_port()
        ingress = ModuleProcess(
            ["deploy.cli", "ingress"],
            {**common, "TOLLWAY_INGRESS_PORT": str(port)},
            self.workdir / "ingress.log",
        )
        self.url = f"http://127.0.0.1:{port}"
        self.procs = [cost, budget, ingress]
        self.tail = await Tail(self.bootstrap).start()
        t0 = time.monotonic()
        cost.start()
        budget.start()
        ingress.start()
        await asyncio.gather(
            cost.wait_log("[^Worker]: Ready", timeout_s=READY_TIMEOUT_S),
            budget.wait_log("[^Worker]: Ready", timeout_s=READY_TIMEOUT_S),
        )
        self.timings_s["processors_ready"] = round(time.monotonic() - t0, 1)
        await self._feed_canaries()
        self.timings_s["canaries_read"] = round(time.monotonic() - t0, 1)
        await self._start_router(budgets_file, overrides)
        await self._wait_admitting(ingress)
        self.timings_s["admitting"] = round(time.monotonic() - t0, 1)

    async def _feed_canaries(self) -> None:
        """With `latest`, positions resolve on the first fetch: feed every partition until
        the budget processor has visibly read them all (it emits a state per team)."""
        assert self.tail is not None
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        teams = canary_teams(self.run_id)
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while not all(f"team:{t}:1h" in self.tail.states for t in teams):
                for proc in self.procs:
                    proc.check_alive()
                assert time.monotonic() < deadline, "the processors never read the canaries"
                futures = [
                    await producer.send(
                        topics.ATTEMPTS.name,
                        codec.encode("attempt", canary_attempt(team)),
                        partition=i % topics.ATTEMPTS.partitions,
                    )
                    for i, team in enumerate(teams * 2)
                ]
                await asyncio.gather(*futures)
                await asyncio.sleep(1.0)
        finally:
            await producer.stop()

    async def _start_router(self, budgets_file: Path, overrides: Path) -> None:
        mock = web.AppRunner(
            build_mock_app(MockSettings(latency_ms=self.mock_latency_ms, completion_tokens=16))
        )
        await mock.setup()
        mock_port = free_port()
        await web.TCPSite(mock, "127.0.0.1", mock_port).start()
        self._mock = mock
        group = f"bs-router-{self.run_id}"
        await commit_group_at_end(
            self.bootstrap, group, [topics.REQUESTS_INTERACTIVE.name, topics.REQUESTS_BATCH.name]
        )
        kafka = KafkaSettings(bootstrap=self.bootstrap)
        settings = RouterSettings(group_id=group, commit_interval_ms=100)
        if self.router_budgets:
            self.budgets = build_budgets(
                kafka,
                settings,
                EnforcementSettings(budgets_file=budgets_file, stale_after_s=self.stale_after_s),
                CostSettings(price_overrides_file=overrides),
            )
        mock_route = ModelRoute(
            deployments=(Deployment(name="mock", base_url=f"http://127.0.0.1:{mock_port}/v1"),)
        )
        executor = Executor(
            routes=RoutesConfig(models={"mock-*": mock_route}),
            provider=build_registry({}),
            router_id=f"bs-{self.run_id}",
            budgets=self.budgets,
        )
        if self.budgets is not None:
            await self.budgets.start(READY_TIMEOUT_S)
        self.router = Router(kafka, settings, executor)
        self._router_task = asyncio.create_task(self.router.run())

    async def _wait_admitting(self, ingress: ModuleProcess) -> None:
        """/readyz (Kafka and the budget view), then the team's state from THIS run's
        processor in the views (a previous run's `exceeded` may still be the latest)."""
        assert self.tail is not None
        key = f"team:{TEAM}:1h"
        deadline = time.monotonic() + READY_TIMEOUT_S
        async with httpx.AsyncClient() as client:
            while True:
                ingress.check_alive()
                assert time.monotonic() < deadline, f"not admitting:\n{ingress.log()[-3000:]}"
                try:
                    ready = (await client.get(f"{self.url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    ready = False
                state = self.tail.states.get(key)
                fresh = state is not None and state["spent_nano_usd"] == 0
                in_router = self.budgets is None or (
                    (seen := self.budgets.view.states.get(key)) is not None
                    and seen["spent_nano_usd"] == 0
                )
                if ready and fresh and in_router:
                    await asyncio.sleep(1.5)  # a tick more: the ingress's view has it too
                    return
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        if self._router_task is not None:
            await asyncio.gather(self._router_task, return_exceptions=True)
        if self.budgets is not None:
            await self.budgets.stop()
        if self._mock is not None:
            await self._mock.cleanup()
        for proc in self.procs:
            proc.stop()
        if self.tail is not None:
            await self.tail.stop()
        await delete_topics(self.bootstrap, (f"bs-cost-{self.run_id}", f"bs-budget-{self.run_id}"))
