"""Rate limits on the real broker (docs/decisions/0014): one router counts a limited key's
requests; sync over the limit is a 429 with Retry-After, async waits and is done later."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from ingress.app import result_response
from schemas import codec, topics
from tests.integration.conftest import routes_for
from tests.integration.kafka_io import TopicReader, produce, skip_backlog
from tests.integration.rate_limit_stack import (
    bus_on,
    limited_view,
    request,
    routers_on,
    send_sync,
)
from tests.unit.test_rate_limits import key
from workers.router.rate_gate import RateGate
from workers.router.rate_limits import RateLimiter
from workers.tenancy.model import Limits

pytestmark = pytest.mark.kafka


async def test_a_burst_of_100_sync_requests_against_60_rpm_admits_60(
    kafka_bootstrap: str, mock_url: str
) -> None:
    group = f"tollway-router-rpm-{uuid.uuid4().hex[:8]}"
    await skip_backlog(kafka_bootstrap, group)
    team, key_id = f"team_{uuid.uuid4().hex[:8]}", "key_rpm60"
    view = limited_view(team, key_id, Limits(rpm=60), Limits())
    async with (
        routers_on(kafka_bootstrap, routes_for(mock_url), view, group),
        bus_on(kafka_bootstrap, view, "rpm-ingress") as bus,
    ):
        envs = [request(team, key_id, "sync", bus) for _ in range(100)]
        started = time.monotonic()
        results = await asyncio.gather(*(send_sync(bus, e) for e in envs))
        took_s = time.monotonic() - started
    statuses = [r["http_status"] for r in results]
    assert statuses.count(200) == 60, statuses
    assert statuses.count(429) == 40, statuses
    refused = [r for r in results if r["http_status"] == 429]
    retry_after = {int(result_response(r).headers["retry-after"]) for r in refused}
    # all within the burst: the first admissions leave the window after 60.1 s
    assert retry_after <= set(range(58, 62)), retry_after
    assert all(r["attempts"] == 0 and r["error_type"] == "RateLimited" for r in refused)
    print(f"100 sync requests, 60 admitted, 40 refused in {took_s:.2f}s; Retry-After {retry_after}")


async def test_async_requests_over_the_limit_all_finish_spaced_by_the_limit(
    kafka_bootstrap: str, mock_url: str
) -> None:
    """4 requests per 6 s window (a 6 s window stands in for the minute): 10 async requests
    are all done, in three waves, and no 6 s window ever holds more than 4 provider calls.
    Meanwhile a sync request of ANOTHER team on the SAME partition is not held up."""
    group = f"tollway-router-async-{uuid.uuid4().hex[:8]}"
    await skip_backlog(kafka_bootstrap, group)
    team, key_id = f"team_{uuid.uuid4().hex[:8]}", "key_async"
    view = limited_view(team, key_id, Limits(rpm=4), Limits())
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    attempts = await TopicReader(kafka_bootstrap, topics.ATTEMPTS.name).start()
    try:
        async with (
            routers_on(kafka_bootstrap, routes_for(mock_url), view, group) as (router,),
            bus_on(kafka_bootstrap, view, "async-ingress") as bus,
        ):
            router.gate = RateGate(view, limiter=RateLimiter(window_ms=6_000))
            envs = [request(team, key_id, "async", bus) for _ in range(10)]
            started_ms = time.time_ns() // 1_000_000
            for env in envs:
                await bus.publish(topics.REQUESTS_INTERACTIVE.name, env)
            deadline = time.monotonic() + 10
            while router.gate.waiting < 6:
                assert time.monotonic() < deadline, router.gate.waiting
                await asyncio.sleep(0.05)
            assert len(router._tasks) - router._calls() == 6  # waiting, not holding slots

            other = request("team_unlimited", "key_other", "sync", bus)
            reply = bus.expect_reply(other["request_id"])
            sent = time.monotonic()
            # keyed like the limited team: the same partition as the 6 waiting records
            await produce(
                kafka_bootstrap,
                topics.REQUESTS_INTERACTIVE.name,
                [(team.encode(), codec.encode("request", other))],
            )
            other_result = await asyncio.wait_for(reply, 10)
            other_s = time.monotonic() - sent
            assert other_result["status"] == "succeeded"
            assert other_s < 3.0, other_s

            done: Any = await results.collect(
                "result", {e["request_id"] for e in envs}, timeout_s=40
            )
            calls: Any = await attempts.collect("attempt", {e["request_id"] for e in envs})
    finally:
        await results.stop()
        await attempts.stop()
    assert sorted(k for k, _ in done) == sorted(e["request_id"] for e in envs)
    assert {v["status"] for _, v in done} == {"succeeded"}
    starts = sorted(v["started_at_ms"] - started_ms for _, v in calls)
    assert len(starts) == 10
    for i, t in enumerate(starts):
        assert sum(1 for u in starts[i:] if u < t + 6_000) <= 4, starts
    assert starts[4] >= 6_000  # the fifth waited out the first window
    assert starts[8] >= 12_000  # the ninth the second
    assert starts[-1] < 20_000  # and nobody waited much longer than the limit says
    print(f"async call starts (ms after publishing): {starts}; other team's sync {other_s:.2f}s")


async def test_waiting_is_bounded_and_waiting_records_pass_to_the_next_owner(
    kafka_bootstrap: str, mock_url: str
) -> None:
    """A router holds at most `rate_limit_max_waiting` (+ one poll) waiting records and then
    pauses their partition; stopping it leaves them uncommitted, and the next owner runs
    them (here after the limit was lifted): nothing accepted is lost, nothing ran twice."""
    group = f"tollway-router-bound-{uuid.uuid4().hex[:8]}"
    await skip_backlog(kafka_bootstrap, group)
    team, key_id = f"team_{uuid.uuid4().hex[:8]}", "key_bound"
    view = limited_view(team, key_id, Limits(rpm=1), Limits())
    results = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    try:
        async with bus_on(kafka_bootstrap, view, "bound-ingress") as bus:
            envs = [request(team, key_id, "async", bus) for _ in range(12)]
            async with routers_on(
                kafka_bootstrap, routes_for(mock_url), view, group,
                rate_limit_max_waiting=3, max_in_flight=4,
            ) as (router,):  # fmt: skip
                await bus.publish(topics.REQUESTS_INTERACTIVE.name, envs[0])
                first: Any = await results.collect("result", {envs[0]["request_id"]})
                for env in envs[1:]:
                    await bus.publish(topics.REQUESTS_INTERACTIVE.name, env)
                deadline = time.monotonic() + 10
                while router.gate.waiting < 3:
                    assert time.monotonic() < deadline, router.gate.waiting
                    await asyncio.sleep(0.05)
                await asyncio.sleep(1.0)  # time to over-fetch, were the bound not enforced
                waiting = router.gate.waiting
                assert 3 <= waiting <= 3 + 4, waiting  # the bound, plus one poll's records
                assert set(router._waiting_by_tp) <= router.consumer.paused()
                assert router._calls() == 0
            early: Any = await results.collect(
                "result", {e["request_id"] for e in envs[1:]}, timeout_s=2
            )
            assert early == []  # the waiting records were dropped, not run, by the stop

            view.keys[key_id] = key(key_id, team)  # the limit is lifted meanwhile
            async with routers_on(kafka_bootstrap, routes_for(mock_url), view, group):
                done: Any = await results.collect(
                    "result", {e["request_id"] for e in envs[1:]}, timeout_s=30
                )
                again: Any = await results.collect(
                    "result", {e["request_id"] for e in envs}, timeout_s=2
                )
    finally:
        await results.stop()
    assert first[0][1]["status"] == "succeeded"
    assert sorted(k for k, _ in done) == sorted(e["request_id"] for e in envs[1:])
    assert {v["status"] for _, v in done} == {"succeeded"}
    assert again == []  # the first (committed) was not run again, nor any other twice
    print(f"waiting at the bound of 3: {waiting}; {len(done)} results after the hand-over")
