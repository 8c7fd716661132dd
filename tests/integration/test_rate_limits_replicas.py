"""Rate limits hold across replicas (issue 7, first acceptance point, shortened): two
ingress replicas and two routers of one group; never "limit x replicas".

Over RUN_S = 20 s, both replicas send a steady stream of sync requests of
- a key limited to 60 RPM: at most 60 admitted in any 60 s window, so exactly 60 of the
  run's 160 (not 120: one router, the owner of the team's partition, counts them all);
- a team limited to 2,000 TPM (its key unlimited): the tokens its admitted calls used
  stay within 2,000 (every estimate is an upper bound here: max_tokens is set).
Tolerance (docs/decisions/0014): a rebalance during a run restarts the owner's windows,
at most one extra window's worth per rebalance; the routers settle their partitions
before the run starts, so none is expected and the assertions allow none.
The full acceptance (2 minutes, at most 120) is the same test with
TOLLWAY_TEST_RATE_LIMIT_RUN_S=120 (at most RPM per 60 s window the run touches).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from typing import Any, Final

import pytest

from ingress.app import result_response
from schemas import topics
from schemas.records import Result
from tests.integration.conftest import routes_for
from tests.integration.kafka_io import TopicReader, skip_backlog
from tests.integration.rate_limit_stack import bus_on, request, routers_on, send_sync
from tests.unit.test_rate_limits import View, key
from workers.tenancy.model import Limits, TeamRecord

pytestmark = pytest.mark.kafka

RUN_S: Final = int(os.environ.get("TOLLWAY_TEST_RATE_LIMIT_RUN_S", "20"))
"""Seconds of load; the acceptance run (2 minutes) sets the variable to 120."""
WINDOWS: Final = math.ceil(RUN_S / 60)
"""60 s windows the run touches: at most RPM (TPM) admitted per window."""
PER_S: Final = 8  # requests per second per leg, alternating between the two replicas
RPM: Final = 60
TPM: Final = 2_000


async def test_two_ingress_replicas_and_two_routers_hold_rpm_and_tpm(
    kafka_bootstrap: str, mock_url: str
) -> None:
    group = f"tollway-router-replicas-{uuid.uuid4().hex[:8]}"
    await skip_backlog(kafka_bootstrap, group)
    rpm_team, tpm_team = f"team_rpm_{uuid.uuid4().hex[:6]}", f"team_tpm_{uuid.uuid4().hex[:6]}"
    view = View(
        teams=[TeamRecord(rpm_team, "rpm"), TeamRecord(tpm_team, "tpm", limits=Limits(tpm=TPM))],
        keys=[key("key_rpm", rpm_team, Limits(rpm=RPM)), key("key_tpm", tpm_team)],
    )
    attempts = await TopicReader(kafka_bootstrap, topics.ATTEMPTS.name).start()
    try:
        async with (
            routers_on(kafka_bootstrap, routes_for(mock_url), view, group, count=2),
            bus_on(kafka_bootstrap, view, "replica-a") as bus_a,
            bus_on(kafka_bootstrap, view, "replica-b") as bus_b,
        ):
            buses = (bus_a, bus_b)
            started = time.monotonic()

            async def one(i: int, team: str, key_id: str) -> Result:
                await asyncio.sleep(max(0.0, started + i / PER_S - time.monotonic()))
                bus = buses[i % 2]
                env = request(team, key_id, "sync", bus)
                env["body"] = (
                    b'{"model": "gpt-4o-mini", "max_tokens": 16, "messages": '
                    b'[{"role": "user", "content": "how many tokens is this?"}]}'
                )
                return await send_sync(bus, env)

            count = RUN_S * PER_S
            rpm_results, tpm_results = await asyncio.gather(
                asyncio.gather(*(one(i, rpm_team, "key_rpm") for i in range(count))),
                asyncio.gather(*(one(i, tpm_team, "key_tpm") for i in range(count))),
            )
            took_s = time.monotonic() - started
            admitted = [r for r in rpm_results if r["http_status"] == 200]
            calls: Any = await attempts.collect("attempt", {r["request_id"] for r in admitted})
    finally:
        await attempts.stop()

    statuses = [r["http_status"] for r in rpm_results]
    # Not RPM x 2 routers: exactly RPM in a one-window run, at most RPM per window over longer.
    assert RPM <= statuses.count(200) <= RPM * WINDOWS, statuses
    assert statuses.count(429) == count - statuses.count(200)
    assert len({v["router_id"] for _, v in calls}) == 1  # one owner counted them all
    refused = [r for r in rpm_results if r["http_status"] == 429]
    retry_after = [int(result_response(r).headers["retry-after"]) for r in refused]
    assert all(1 <= s <= 61 for s in retry_after)

    tpm_used = sum(
        r["prompt_tokens"] + r["completion_tokens"] for r in tpm_results if r["http_status"] == 200
    )
    tpm_admitted = sum(r["http_status"] == 200 for r in tpm_results)
    assert {r["http_status"] for r in tpm_results} <= {200, 429}
    assert 0 < tpm_used <= TPM * WINDOWS, tpm_used
    print(
        f"{took_s:.1f}s, 2 ingress + 2 routers: key at {RPM} RPM admitted "
        f"{statuses.count(200)}/{count} (Retry-After {min(retry_after)}-{max(retry_after)} s); "
        f"team at {TPM} TPM admitted {tpm_admitted}/{count} using {tpm_used} tokens"
    )
