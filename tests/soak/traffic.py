"""The soak's steady load: one open-loop constant arrival rate mixing three kinds of request.

Request i starts at start + i / rate whatever the earlier ones are doing (open loop: a
slow stack faces a growing queue instead of a politely slower client), and its kind is
slot i of `MIX` (10 slots: 4 async, 3 sync, 3 streaming), so every minute carries the
same mix:

    async   POST /v1/async/chat/completions with a `callback_url` to the loopback
            receiver: `AsyncLoad.submit` of the chaos suite (tests/chaos/load.py), so
            the accepted ids feed the chaos invariants unchanged
    sync    POST /v1/chat/completions, the answer waited for
    stream  the same with "stream": true, read to the end of the SSE stream

A sync or streamed request answered 200 is `served` under the id the ingress names in
`x-tollway-request-id` (checked at the end: one result, one ClickHouse row). Every
other answer is counted by kind and status. Small batches come from the chaos suite's
`BatchLoad`, run beside this.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Final, Literal

import httpx

from ingress.app import REQUEST_ID_HEADER
from tests.chaos.load import AsyncLoad, chat_body

Kind = Literal["async", "sync", "stream"]
MIX: Final[tuple[Kind, ...]] = (
    "async", "sync", "stream", "async", "sync", "stream", "async", "sync", "stream", "async",
)  # fmt: skip
STREAM_END: Final = b"data: [DONE]"


def kind_of(i: int) -> Kind:
    """The kind of request number `i` (0-based)."""
    return MIX[i % len(MIX)]


@dataclass
class MixedLoad:
    url: str
    callback_url: str
    rate_per_s: float
    """Requests of all three kinds together, per second."""
    asyncs: AsyncLoad = field(init=False)
    served: list[str] = field(default_factory=list)
    """Request ids of sync and streamed requests answered 200 (in full)."""
    outcomes: Counter[str] = field(default_factory=Counter)
    """`<kind> <status or transport error>` -> count, for sync and streamed requests."""
    submitted: Counter[str] = field(default_factory=Counter)
    nominal: int = 0
    """Requests the rate asks for over the run (duration x rate)."""
    late_s_max: float = 0.0
    """The latest any request was started after its due time (seconds)."""

    def __post_init__(self) -> None:
        self.asyncs = AsyncLoad(self.url, self.callback_url, self.rate_per_s)

    async def run(self, duration_s: float, label: str) -> None:
        """Start request i at start + i / rate, but never after start + `duration_s`: a
        starved generator (a loaded machine) offers fewer requests, says so in `issued`
        and `late_s_max`, and still ends on time."""
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
        pending: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(base_url=self.url, timeout=60.0, limits=limits) as client:
            start = time.monotonic()
            self.nominal = int(duration_s * self.rate_per_s)
            for i in range(self.nominal):
                due = start + i / self.rate_per_s
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                now = time.monotonic()
                if now >= start + duration_s:
                    break
                self.late_s_max = max(self.late_s_max, now - due)
                kind = kind_of(i)
                self.submitted[kind] += 1
                task = asyncio.create_task(self._one(client, kind, f"{label} {i}"))
                pending.add(task)  # kept until done: a finished task is dropped, not hoarded
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    @property
    def issued(self) -> int:
        return sum(self.submitted.values())

    async def _one(self, client: httpx.AsyncClient, kind: Kind, text: str) -> None:
        if kind == "async":
            await self.asyncs.submit(client, text)  # counted in self.asyncs.outcomes
            return
        body = {**chat_body(text), "stream": kind == "stream"}
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                content = await response.aread()
        except httpx.TransportError as exc:
            self.outcomes[f"{kind} {type(exc).__name__}"] += 1
            return
        complete = kind == "sync" or content.rstrip().endswith(STREAM_END)
        status = str(response.status_code) if complete else f"{response.status_code} cut"
        self.outcomes[f"{kind} {status}"] += 1
        if response.status_code == 200 and complete:
            self.served.append(response.headers[REQUEST_ID_HEADER])

    def all_outcomes(self) -> dict[str, int]:
        """Every kind's answers, `<kind> <status or transport error>` -> count."""
        asyncs = {f"async {k}": n for k, n in self.asyncs.outcomes.items()}
        return dict(sorted({**self.outcomes, **asyncs}.items()))
