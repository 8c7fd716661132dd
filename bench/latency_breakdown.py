"""Where Tollway's added sync latency goes: per-hop times from the request's trace spans.

The issue's latency target (added p50 <= 5 ms, p99 <= 25 ms at 100 req/s) is missed on
this machine; this is its profile. `bench/compare.py` runs the whole stack once more
with tracing written to span files (TOLLWAY_OTEL_EXPORTER=jsonl, docs/observability-
tracing.md), drives sync load at fixed rates, and splits every traced request into the
steps below. Tracing itself costs CPU (spans in every process), so the totals here are
a little above the untraced ladder's: the shares are the point, not the sum.

    ingress: admit       server span start -> publish span start (parse, validate, admit)
    kafka: request hop   publish span start -> router consume span start (produce,
                         broker append, the router's fetch, decode)
    router: before call  consume span start -> provider call span start (plan, pacing)
    provider call        client span duration minus the mock's fixed latency (HTTP
                         write/parse and the mock's own scheduling)
    reply path           provider call end -> server span end (encode and produce the
                         result, broker, the ingress's fetch, the HTTP answer)
    in the ingress span  server span duration minus the provider call span's

Two floors measured on the same broker and machine frame them: the raw Kafka hop
(aiokafka produce with acks=all and idempotence -> a consumer's fetch, `kafka_hop`) and
a loopback TCP round trip between two Python processes (`loopback_rtt`).
Pure functions here, except `kafka_hop` and `loopback_rtt` (sockets, Kafka).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

SERVER_SPAN: Final = "POST /v1/chat/completions"
PUBLISH_SPAN: Final = "publish tollway.requests.interactive"
CONSUME_SPAN: Final = "process tollway.requests.interactive"
CALL_SPAN_PREFIX: Final = "chat "
STEPS: Final = (
    "ingress: admit",
    "kafka: request hop",
    "router: before call",
    "provider call minus mock latency",
    "reply path",
    "in the ingress span, all but the provider call",
)


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """The four spans of one sync request, as (start, end) in ns since the epoch."""

    server: tuple[int, int]
    publish: tuple[int, int]
    consume: tuple[int, int]
    call: tuple[int, int]

    def steps_ms(self, mock_latency_ms: float) -> dict[str, float]:
        """Each step of the module docstring, in ms."""

        def ms(a: int, b: int) -> float:
            return (b - a) / 1e6

        call_ms = ms(*self.call)
        return {
            STEPS[0]: ms(self.server[0], self.publish[0]),
            STEPS[1]: ms(self.publish[0], self.consume[0]),
            STEPS[2]: ms(self.consume[0], self.call[0]),
            STEPS[3]: call_ms - mock_latency_ms,
            STEPS[4]: ms(self.call[1], self.server[1]),
            STEPS[5]: ms(*self.server) - call_ms,
        }


def read_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span line of every `*.jsonl` file under `directory` (torn last lines skipped)."""
    spans: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written when the process stopped
    return spans


def requests_from(spans: Iterable[Mapping[str, Any]]) -> list[RequestTimes]:
    """One `RequestTimes` per trace holding all four spans of a sync request.

    A request that fell over to a second provider call keeps its first call; traces
    missing a span (sampling, a process stopped before exporting) are left out.
    """
    by_trace: dict[str, dict[str, tuple[int, int]]] = {}
    for span in spans:
        name = str(span.get("name", ""))
        if name == SERVER_SPAN:
            key = "server"
        elif name == PUBLISH_SPAN:
            key = "publish"
        elif name == CONSUME_SPAN:
            key = "consume"
        elif name.startswith(CALL_SPAN_PREFIX) and span.get("kind") == "client":
            key = "call"
        else:
            continue
        times = (int(span["start_unix_nano"]), int(span["end_unix_nano"]))
        found = by_trace.setdefault(str(span["trace_id"]), {})
        if key not in found or times[0] < found[key][0]:
            found[key] = times
    return [
        RequestTimes(t["server"], t["publish"], t["consume"], t["call"])
        for t in by_trace.values()
        if len(t) == 4
    ]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in [0, 1])."""
    if not sorted_values:
        raise ValueError("no values")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def summarize(
    requests: Sequence[RequestTimes], mock_latency_ms: float, window_ns: tuple[int, int]
) -> dict[str, Any]:
    """p50/p95/p99 (ms) of every step over the requests whose server span started in
    `window_ns` (the measured part of one load step)."""
    inside = [r for r in requests if window_ns[0] <= r.server[0] < window_ns[1]]
    out: dict[str, Any] = {"requests": len(inside), "steps": {}}
    if not inside:
        return out
    per_step: dict[str, list[float]] = {name: [] for name in STEPS}
    for request in inside:
        for name, value in request.steps_ms(mock_latency_ms).items():
            per_step[name].append(value)
    for name, values in per_step.items():
        values.sort()
        out["steps"][name] = {
            f"p{int(q * 100)}_ms": round(percentile(values, q), 2) for q in (0.5, 0.95, 0.99)
        }
    return out


def _latencies(values: list[float]) -> dict[str, float]:
    values.sort()
    return {f"p{int(q * 100)}_ms": round(percentile(values, q), 3) for q in (0.5, 0.95, 0.99)}


async def kafka_hop(bootstrap: str, rate_rps: float = 50.0, n: int = 300) -> dict[str, Any]:
    """The raw Kafka floor: one-record sends (acks=all, idempotent, linger 0) at `rate_rps`
    to a new 1-partition topic, each timed to its ack and to a consumer's receipt (ms)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench.kafka-hop.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0
    )
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    acks: list[float] = []
    hops: list[float] = []
    sent_at: dict[bytes, float] = {}

    async def receive() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            hops.extend(
                (now - sent_at.pop(record.value)) * 1000
                for records in batch.values()
                for record in records
                if record.value in sent_at
            )

    try:
        await producer.send_and_wait(topic, b"warm")
        receiving = asyncio.create_task(receive())
        await asyncio.sleep(1.0)  # the consumer's assignment and first fetch
        for i in range(n):
            value = str(i).encode()
            started = sent_at[value] = time.perf_counter()
            await producer.send_and_wait(topic, value)
            acks.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, 1 / rate_rps - (time.perf_counter() - started)))
        await asyncio.sleep(0.5)
        receiving.cancel()
    finally:
        await producer.stop()
        await consumer.stop()
    return {"rate_rps": rate_rps, "n": n, "ack": _latencies(acks), "hop": _latencies(hops)}


def _echo_server(sock: socket.socket) -> None:
    connection, _ = sock.accept()
    with connection:
        while data := connection.recv(256):
            connection.sendall(data)


def loopback_rtt(n: int = 500) -> dict[str, float]:
    """Round trip of 64 bytes to an echo in another process over loopback TCP (ms): what
    one cross-process wake-up costs on this machine, the unit every hop above pays."""
    listener = socket.create_server(("127.0.0.1", 0))
    process = multiprocessing.get_context("fork").Process(target=_echo_server, args=(listener,))
    process.start()
    try:
        with socket.create_connection(listener.getsockname()[:2]) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times: list[float] = []
            for _ in range(n):
                started = time.perf_counter()
                client.sendall(b"x" * 64)
                received = 0
                while received < 64:
                    received += len(client.recv(256))
                times.append((time.perf_counter() - started) * 1000)
                time.sleep(0.002)
    finally:
        listener.close()
        process.join(5)
        if process.is_alive():
            process.kill()
    return _latencies(times)
