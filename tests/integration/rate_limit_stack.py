"""Ingress buses and routers on the real broker with a tenancy view that rate-limits one key
(docs/decisions/0014); shared by test_rate_limits.py and test_rate_limits_replicas.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ingress.bus import wait_reply
from ingress.kafka_bus import KafkaBus
from schemas import topics
from schemas.records import Mode, RequestEnvelope, Result
from schemas.routes import RoutesConfig
from schemas.settings import KafkaSettings
from tests.integration.kafka_io import envelope
from tests.unit.test_rate_limits import View, key
from workers.providers.registry import build_registry
from workers.router.consumer import Router
from workers.router.execution import Executor
from workers.router.settings import RouterSettings
from workers.tenancy.model import Limits, TeamRecord


def limited_view(team_id: str, key_id: str, key_limits: Limits, team_limits: Limits) -> View:
    return View(
        teams=[TeamRecord(team_id, "rate-limited", limits=team_limits)],
        keys=[key(key_id, team_id, key_limits)],
    )


@asynccontextmanager
async def bus_on(bootstrap: str, view: View, name: str) -> AsyncIterator[KafkaBus]:
    """An ingress replica's Kafka side: publishes keyed as 0014 says, reads its replies."""
    bus = KafkaBus(
        KafkaSettings(bootstrap=bootstrap),
        client_id=f"it-{name}",
        result_index_max=10_000,
        tenancy=view,
    )
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


@asynccontextmanager
async def routers_on(
    bootstrap: str,
    routes: RoutesConfig,
    view: View,
    group_id: str,
    count: int = 1,
    **settings: Any,
) -> AsyncIterator[list[Router]]:
    """`count` routers of one group (RouterSettings overridden by `settings`), returned once
    every one of them owns partitions."""
    routers = [
        Router(
            KafkaSettings(bootstrap=bootstrap),
            RouterSettings(group_id=group_id, commit_interval_ms=50, **settings),
            Executor(routes=routes, provider=build_registry({}), router_id=f"{group_id}-{i}"),
            tenancy=view,
        )
        for i in range(count)
    ]
    tasks = [asyncio.create_task(r.run()) for r in routers]
    try:
        deadline = time.monotonic() + 60
        total = topics.REQUESTS_INTERACTIVE.partitions + topics.REQUESTS_BATCH.partitions
        while not (
            all(r.consumer.assignment() for r in routers)
            and sum(len(r.consumer.assignment()) for r in routers) == total
        ):
            assert time.monotonic() < deadline, "the routers never shared the partitions"
            await asyncio.sleep(0.1)
        yield routers
    finally:
        for r in routers:
            r.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def request(team_id: str, key_id: str, mode: Mode, bus: KafkaBus) -> RequestEnvelope:
    return envelope(
        mode=mode,
        team_id=team_id,
        key_id=key_id,
        request_id=f"req_it_{uuid.uuid4().hex}",
        reply_partition=bus.reply_partition if mode == "sync" else None,
    )


async def send_sync(bus: KafkaBus, env: RequestEnvelope, timeout_s: float = 60) -> Result:
    """Publish a sync request and wait for its reply, as the ingress does."""
    future = bus.expect_reply(env["request_id"])
    await bus.publish(topics.REQUESTS_INTERACTIVE.name, env)
    return await wait_reply(bus, future, env["request_id"], timeout_s)
