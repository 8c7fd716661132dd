"""The chaos run's traffic: async requests at a constant arrival rate, and batches.

Async requests are submitted on a fixed schedule (request i at start + i / rate),
each as its own task, whatever the ingress answers, so a dead ingress shows up as
refused submissions, not as a slower schedule. Only a 202 is a promise: its id is
`accepted`; every other outcome (connection refused or reset, 503 while Kafka is
away) is counted by kind and promised nothing. Each request asks for a webhook
(`callback_url` to the loopback receiver).

Batches go through the Files and Batches API (the openai SDK, no retries of its own):
a JSONL file of `lines` requests is uploaded and a batch created every `every_s`
seconds; a batch whose create answered is `accepted` with its line count.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import openai
import orjson

MODEL = "gpt-4o-mini"
"""Routed to the mock provider and priced by the built-in catalogue (so money is checked)."""


def chat_body(text: str) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}]}


@dataclass
class AsyncLoad:
    url: str
    callback_url: str
    rate_per_s: float
    accepted: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    submitted: int = 0

    async def run(self, duration_s: float, label: str) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=self.url, timeout=10.0, limits=limits) as client:
            tasks: list[asyncio.Task[None]] = []
            start = time.monotonic()
            total = int(duration_s * self.rate_per_s)
            for i in range(total):
                await asyncio.sleep(max(0.0, start + i / self.rate_per_s - time.monotonic()))
                tasks.append(asyncio.create_task(self.submit(client, f"{label} {i}")))
                self.submitted += 1
            await asyncio.gather(*tasks)

    async def submit(self, client: httpx.AsyncClient, text: str) -> None:
        """One async request (also used by the memory soak's mixed load, tests/soak)."""
        body = {**chat_body(text), "callback_url": self.callback_url}
        try:
            response = await client.post("/v1/async/chat/completions", json=body)
        except httpx.TransportError as exc:
            self.outcomes[type(exc).__name__] += 1  # no answer: nothing was promised
            return
        self.outcomes[str(response.status_code)] += 1
        if response.status_code == 202:
            self.accepted.append(response.json()["id"])


@dataclass(frozen=True, slots=True)
class AcceptedBatch:
    batch_id: str
    custom_ids: tuple[str, ...]


@dataclass
class BatchLoad:
    url: str
    lines: int
    accepted: list[AcceptedBatch] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)

    def client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key="chaos", max_retries=0, timeout=15.0
        )

    async def run(self, duration_s: float, every_s: float) -> None:
        async with self.client() as sdk:
            start = time.monotonic()
            n = 0
            while n * every_s < duration_s:
                await asyncio.sleep(max(0.0, start + n * every_s - time.monotonic()))
                await self._submit(sdk, n)
                n += 1

    async def _submit(self, sdk: openai.AsyncOpenAI, n: int) -> None:
        custom_ids = tuple(f"b{n}-{i}" for i in range(self.lines))
        body = b"".join(
            orjson.dumps(
                {
                    "custom_id": cid,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": chat_body(f"batch {cid}"),
                }
            )
            + b"\n"
            for cid in custom_ids
        )
        try:
            uploaded = await sdk.files.create(file=(f"chaos-{n}.jsonl", body), purpose="batch")
            created = await sdk.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
        except openai.APIStatusError as exc:
            self.refused[str(exc.status_code)] += 1
            return
        except openai.APIConnectionError as exc:
            self.refused[type(exc).__name__] += 1
            return
        self.accepted.append(AcceptedBatch(created.id, custom_ids))
