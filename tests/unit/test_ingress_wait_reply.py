"""ingress/bus.py `wait_reply`: the reply, a deadline, or the caller's cancellation."""

from __future__ import annotations

import asyncio

import pytest

from ingress.bus import MemoryBus, wait_reply
from schemas.errors import DeadlineExceeded
from schemas.records import RequestEnvelope, Result


async def _no_answer(_: RequestEnvelope) -> None:
    return None


def _result(request_id: str) -> Result:
    return {
        "request_id": request_id,
        "team_id": "default",
        "key_id": None,
        "mode": "sync",
        "execution_id": "e1",
        "status": "succeeded",
        "http_status": 200,
        "body": b"{}",
        "error_type": None,
        "requested_model": "m",
        "served_model": "m",
        "provider": "openai",
        "deployment": "d",
        "attempts": 1,
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "received_at_ms": 0,
        "finished_at_ms": 1,
        "metadata": {},
    }


async def test_the_reply_is_returned_and_forgotten() -> None:
    bus = MemoryBus(_no_answer)
    future = bus.expect_reply("r1")
    asyncio.get_running_loop().call_later(0.01, bus.resolve, _result("r1"))
    result = await wait_reply(bus, future, "r1", timeout_s=5)
    assert result["request_id"] == "r1"
    assert not bus.waiting("r1")


async def test_no_reply_in_time_is_deadline_exceeded_naming_the_request() -> None:
    bus = MemoryBus(_no_answer)
    future = bus.expect_reply("r2")
    with pytest.raises(DeadlineExceeded, match="r2"):
        await wait_reply(bus, future, "r2", timeout_s=0.02)
    assert not bus.waiting("r2")
    bus.resolve(_result("r2"))  # a late reply finds nobody and breaks nothing


async def test_cancelling_the_caller_cancels_the_wait() -> None:
    bus = MemoryBus(_no_answer)
    future = bus.expect_reply("r3")
    task = asyncio.create_task(wait_reply(bus, future, "r3", timeout_s=5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert future.cancelled()
    assert not bus.waiting("r3")
