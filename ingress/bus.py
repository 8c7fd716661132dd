"""What the ingress needs from the message bus, and an in-memory fake of it.

`Bus` is the seam between the HTTP handlers and Kafka: publish durably,
wait for a sync reply, look up a finished result. `KafkaBus`
(`ingress/kafka_bus.py`) is the real one; `MemoryBus` runs handlers in unit
tests with no broker, answering each published request with a function.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from schemas.errors import DeadlineExceeded, ServiceUnavailable
from schemas.records import RequestEnvelope, Result, StreamChunk

StreamItem = StreamChunk | Result


class Bus(Protocol):
    @property
    def reply_partition(self) -> int: ...

    def ready(self) -> bool:
        """True when Kafka is reachable and the result index has caught up."""
        ...

    def expect_reply(self, request_id: str) -> asyncio.Future[Result]:
        """Register interest in a sync reply BEFORE publishing, so none is missed."""
        ...

    def expect_stream(self, request_id: str) -> asyncio.Queue[StreamItem]:
        """Register a streamed reply: chunks in order, then the Result."""
        ...

    def forget_reply(self, request_id: str) -> None: ...

    async def publish(self, topic: str, envelope: RequestEnvelope) -> None:
        """Return only once Kafka acknowledged the record (acks=all).
        Raises `ServiceUnavailable` when it could not be written."""
        ...

    async def lookup(self, request_id: str) -> Result | None:
        """The first result recorded for `request_id`, or None if there is none yet."""
        ...

    def has_result(self, request_id: str) -> bool:
        """True once a result for `request_id` is known to this replica (no I/O). Counts
        async work as finished for the queue cap (ingress/queue_limit.py)."""
        ...


async def wait_reply(
    bus: Bus, future: asyncio.Future[Result], request_id: str, timeout_s: float
) -> Result:
    """Await a registered reply; `DeadlineExceeded` after `timeout_s`.

    A timer cancels the future at the deadline: one timer handle per request, where
    `asyncio.wait_for` adds a second future and callbacks (~4 us less CPU per sync
    request). Cancelling the caller cancels the wait, as with `wait_for`.
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        if not future.done():
            expired = True
            future.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        return await future
    except asyncio.CancelledError:
        if not expired:
            raise
        raise DeadlineExceeded(
            f"No result within {timeout_s:g}s; the request {request_id} is still recorded "
            "and its result can be fetched from /v1/async/requests/{id}."
        ) from None
    finally:
        timer.cancel()
        bus.forget_reply(request_id)


class ReplyWaiters:
    """Sync requests waiting for their reply, by request id (shared by buses).

    A plain sync request waits on a future for its Result; a streamed one on a
    queue that receives its chunks in order and then its Result.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Future[Result]] = {}
        self._streams: dict[str, asyncio.Queue[StreamItem]] = {}

    def expect_reply(self, request_id: str) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiters[request_id] = future
        return future

    def expect_stream(self, request_id: str) -> asyncio.Queue[StreamItem]:
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        self._streams[request_id] = queue
        return queue

    def forget_reply(self, request_id: str) -> None:
        self._waiters.pop(request_id, None)
        self._streams.pop(request_id, None)

    def waiting(self, request_id: str) -> bool:
        waiter = self._waiters.get(request_id)
        return (waiter is not None and not waiter.done()) or request_id in self._streams

    def resolve(self, result: Result) -> None:
        """Hand `result` to its waiter, if one is still waiting."""
        request_id = result["request_id"]
        stream = self._streams.get(request_id)
        if stream is not None:
            stream.put_nowait(result)
            return
        waiter = self._waiters.get(request_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    def push_chunk(self, chunk: StreamChunk) -> None:
        stream = self._streams.get(chunk["request_id"])
        if stream is not None:
            stream.put_nowait(chunk)


Responder = Callable[[RequestEnvelope], Awaitable[Result | list[StreamItem] | None]]


class MemoryBus(ReplyWaiters):
    """In-memory `Bus`: answers come from `responder`: a Result, a list of stream items
    (chunks then the Result), or None (no answer)."""

    def __init__(self, responder: Responder, *, available: bool = True) -> None:
        super().__init__()
        self.responder = responder
        self.available = available
        self.published: list[tuple[str, RequestEnvelope]] = []
        self.results: dict[str, Result] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def reply_partition(self) -> int:
        return 0

    def ready(self) -> bool:
        return self.available

    async def publish(self, topic: str, envelope: RequestEnvelope) -> None:
        if not self.available:
            raise ServiceUnavailable("Kafka is unreachable: the request was not accepted.")
        self.published.append((topic, envelope))
        task = asyncio.create_task(self._answer(envelope))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, envelope: RequestEnvelope) -> None:
        answer = await self.responder(envelope)
        items = answer if isinstance(answer, list) else [] if answer is None else [answer]
        for item in items:
            if "seq" in item:
                self.push_chunk(item)  # type: ignore[arg-type]  # "seq" marks a StreamChunk
            else:
                result: Result = item
                self.results.setdefault(result["request_id"], result)
                self.resolve(result)

    async def lookup(self, request_id: str) -> Result | None:
        return self.results.get(request_id)

    def has_result(self, request_id: str) -> bool:
        return request_id in self.results
