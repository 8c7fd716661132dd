"""Webhooks on the real broker: signed deliveries to a loopback receiver (allow-listed),
retries through tollway.callbacks.retry while the receiver is down, 410 + replay."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from standardwebhooks import Webhook

from deploy.topics import ensure_topics
from schemas import codec, topics
from schemas.batch_topics import ALL_BATCH_AND_CALLBACK_TOPICS, CALLBACKS_DEAD
from schemas.records import BudgetEvent, WebhookDelivery
from schemas.settings import KafkaSettings
from tests.integration.conftest import free_port
from tests.integration.kafka_io import envelope, produce, skip_backlog
from workers.callbacks.dispatcher import Dispatcher, replay
from workers.callbacks.endpoints import WebhooksConfig, endpoint_key
from workers.callbacks.events import CALLBACK_URL_KEY
from workers.callbacks.settings import CallbacksSettings, load_webhooks
from workers.callbacks.signing import new_secret
from workers.callbacks.webhooks_file import ensure_webhooks_file

pytestmark = pytest.mark.kafka

SECRET = new_secret()
ROUTER_GROUP = "tollway-router-callbacks-it"


class Receiver:
    """A webhook endpoint on loopback; answers `script` statuses in turn, then 200."""

    def __init__(self, port: int, script: list[int] | None = None) -> None:
        self.port = port
        self.script = list(script or [])
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.received.append(
            ({k.lower(): v for k, v in request.headers.items()}, await request.read())
        )
        return web.Response(status=self.script.pop(0) if self.script else 200)

    async def wait(self, count: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"got {len(self.received)} of {count}"
            await asyncio.sleep(0.05)


def config(endpoints: list[dict[str, Any]]) -> WebhooksConfig:
    return WebhooksConfig.model_validate(
        {"teams": {"default": {"secrets": [SECRET], "endpoints": endpoints}}}
    )


@pytest.fixture
async def start_dispatcher(
    kafka_bootstrap: str,
) -> AsyncIterator[Callable[[WebhooksConfig], Any]]:
    await ensure_topics(kafka_bootstrap, ALL_BATCH_AND_CALLBACK_TOPICS)
    running: list[tuple[Dispatcher, asyncio.Task[None]]] = []

    async def start(webhooks: WebhooksConfig, **overrides: Any) -> Dispatcher:
        options: dict[str, Any] = {
            "group_id": "tollway-callbacks-it",
            "allow_http": True,
            "allow_networks": ("127.0.0.0/8",),
            "retry_base_s": 0.2,
            "retry_factor": 2,
            "retry_max_delay_s": 0.5,
            "retry_give_up_after_s": 60,
            "retry_jitter": 0,
            "timeout_s": 2,
            "commit_interval_ms": 100,
        }
        settings = CallbacksSettings(**{**options, **overrides})
        dispatcher = Dispatcher(KafkaSettings(bootstrap=kafka_bootstrap), settings, webhooks)
        task = asyncio.create_task(dispatcher.run())
        running.append((dispatcher, task))
        await asyncio.wait_for(dispatcher.ready(), 30)
        return dispatcher

    yield start
    for dispatcher, _ in running:
        dispatcher.stop()
    await asyncio.gather(*(t for _, t in running), return_exceptions=True)


def budget_event(scope: str = "default") -> BudgetEvent:
    return {
        "event_id": f"team:{scope}:month:80:{uuid.uuid4().hex}",
        "scope_type": "team",
        "scope_id": scope,
        "window": "month",
        "threshold_pct": 80,
        "spent_nano_usd": 8_000_000_000,
        "limit_nano_usd": 10_000_000_000,
        "occurred_at_ms": int(time.time() * 1000),
    }


async def test_async_request_result_is_delivered_signed_to_its_callback_url(
    kafka_bootstrap: str, run_router: Any, start_dispatcher: Any
) -> None:
    receiver = await Receiver(free_port()).start()
    try:
        await skip_backlog(kafka_bootstrap, ROUTER_GROUP)
        run_router(ROUTER_GROUP)
        await start_dispatcher(config([]))
        request = envelope(mode="async", metadata={CALLBACK_URL_KEY: receiver.url, "k": "v"})
        await produce(
            kafka_bootstrap,
            topics.REQUESTS_INTERACTIVE.name,
            [(request["request_id"].encode(), codec.encode("request", request))],
        )
        await receiver.wait(1)
        headers, body = receiver.received[0]
        event = Webhook(SECRET).verify(body, headers)  # the independent implementation
        assert event["type"] == "request.succeeded"
        assert event["data"]["id"] == request["request_id"]
        assert event["data"]["response"]["object"] == "chat.completion"
        assert event["data"]["metadata"] == {"k": "v"}
    finally:
        await receiver.stop()


async def test_a_receiver_that_is_down_then_recovers_gets_the_event(
    kafka_bootstrap: str, start_dispatcher: Any
) -> None:
    port = free_port()  # nothing listens yet: connection refused
    receiver = Receiver(port, script=[503, 503])
    hook = {"id": f"ops-{uuid.uuid4().hex[:8]}", "url": receiver.url, "events": ["budget.*"]}
    await start_dispatcher(config([hook]))
    event = budget_event()
    await produce(
        kafka_bootstrap,
        topics.BUDGET_EVENTS.name,
        [(b"team:default", codec.encode("budget_event", event))],
    )
    await asyncio.sleep(1.5)  # a few refused attempts go through the retry topic
    await receiver.start()
    try:
        await receiver.wait(3)  # two 503s, then a 200
        ids = {h["webhook-id"] for h, _ in receiver.received}
        assert len(ids) == 1  # stable across retries
        stamps = [int(h["webhook-timestamp"]) for h, _ in receiver.received]
        assert stamps == sorted(stamps)
        headers, body = receiver.received[-1]
        data = Webhook(SECRET).verify(body, headers)["data"]
        assert data["spent_usd"] == "8"
        assert data["threshold_pct"] == 80
        await asyncio.sleep(1.0)
        assert len(receiver.received) == 3  # nothing more after the 200
    finally:
        await receiver.stop()


async def test_410_disables_the_endpoint_and_replay_delivers_after_it_is_fixed(
    kafka_bootstrap: str, start_dispatcher: Any
) -> None:
    receiver = await Receiver(free_port(), script=[410]).start()
    hook_id = f"gone-{uuid.uuid4().hex[:8]}"
    try:
        dead_from = await _dead_end(kafka_bootstrap)
        await start_dispatcher(config([{"id": hook_id, "url": receiver.url}]))
        # Waits on what happened, not fixed sleeps: under a full tier the dispatcher may
        # first read through other tests' backlog on the shared group (CI: 0 sent in 2 s).
        for sent in (1, 2):
            await produce(
                kafka_bootstrap,
                topics.BUDGET_EVENTS.name,
                [(b"team:default", codec.encode("budget_event", budget_event()))],
            )
            if sent == 1:
                await receiver.wait(1)
        # Both end as dead letters: the 410, then the event for the disabled endpoint.
        assert len(await _dead_letters_after(kafka_bootstrap, dead_from, receiver.url, want=2)) == 2
        assert len(receiver.received) == 1  # the second event was not sent: disabled
        replayed = await replay(
            KafkaSettings(bootstrap=kafka_bootstrap),
            endpoint_key=endpoint_key("default", hook_id),
            enable=True,
        )
        assert replayed == 2
        await receiver.wait(3)
        for headers, body in receiver.received[1:]:
            Webhook(SECRET).verify(body, headers)
        assert receiver.received[0][0]["webhook-id"] in {
            h["webhook-id"] for h, _ in receiver.received[1:]
        }
    finally:
        await receiver.stop()


async def _dead_letters_after(
    bootstrap: str, start: int, url: str, want: int = 1
) -> list[WebhookDelivery]:
    """Dead letters for `url` from offset `start`, once `want` are there (or after 20 s)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(CALLBACKS_DEAD.name, 0)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        found: list[WebhookDelivery] = []
        deadline = time.monotonic() + 20
        while len(found) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                delivery = codec.decode("webhook_delivery", record.value or b"")
                if delivery["url"] == url:
                    found.append(delivery)
        return found
    finally:
        await consumer.stop()


async def _dead_end(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(CALLBACKS_DEAD.name, 0)
        end: int = (await consumer.end_offsets([tp]))[tp]
        return end
    finally:
        await consumer.stop()


async def test_the_local_stack_file_signs_and_loopback_needs_the_allow_list(
    kafka_bootstrap: str, run_router: Any, start_dispatcher: Any, tmp_path: Path
) -> None:
    """`tollway up`'s generated webhooks file signs callback deliveries; a receiver on
    loopback is reached only with the development allow-list, refused without it."""
    path = tmp_path / "webhooks.yaml"
    assert ensure_webhooks_file(path)
    webhooks = load_webhooks(path)
    team = webhooks.team("default")
    assert team is not None
    secret = team.secrets[0].get_secret_value()
    receiver = await Receiver(free_port()).start()
    try:
        await skip_backlog(kafka_bootstrap, ROUTER_GROUP)
        run_router(ROUTER_GROUP)
        dead_from = await _dead_end(kafka_bootstrap)
        refusing = await start_dispatcher(
            webhooks, group_id=f"it-refuse-{uuid.uuid4().hex[:6]}", allow_networks=()
        )
        request = envelope(mode="async", metadata={CALLBACK_URL_KEY: receiver.url})
        await produce(
            kafka_bootstrap,
            topics.REQUESTS_INTERACTIVE.name,
            [(request["request_id"].encode(), codec.encode("request", request))],
        )
        (dead,) = await _dead_letters_after(kafka_bootstrap, dead_from, receiver.url)
        assert "127.0.0.1" in (dead["last_error"] or "")
        assert receiver.received == []
        refusing.stop()

        await start_dispatcher(webhooks, group_id=f"it-allow-{uuid.uuid4().hex[:6]}")
        allowed = envelope(mode="async", metadata={CALLBACK_URL_KEY: receiver.url})
        await produce(
            kafka_bootstrap,
            topics.REQUESTS_INTERACTIVE.name,
            [(allowed["request_id"].encode(), codec.encode("request", allowed))],
        )
        await receiver.wait(1)
        headers, body = receiver.received[0]
        assert Webhook(secret).verify(body, headers)["data"]["id"] == allowed["request_id"]
    finally:
        await receiver.stop()


def _result_of(request_id: str, status: str, url: str) -> Any:
    now = int(time.time() * 1000)
    failed = status == "failed"
    return {
        "request_id": request_id, "team_id": "default", "key_id": None, "mode": "async",
        "execution_id": uuid.uuid4().hex, "status": status, "http_status": 502 if failed else 200,
        "body": b'{"error": {"message": "down"}}' if failed else b'{"object": "chat.completion"}',
        "error_type": "AllProvidersFailed" if failed else None, "requested_model": "gpt-4o-mini",
        "served_model": None if failed else "gpt-4o-mini", "provider": None if failed else "mock",
        "deployment": None if failed else "mock", "attempts": 1, "prompt_tokens": 1,
        "completion_tokens": 0 if failed else 1, "cached_tokens": 0, "reasoning_tokens": 0,
        "cache_write_tokens": 0, "received_at_ms": now, "finished_at_ms": now,
        "metadata": {CALLBACK_URL_KEY: url},
    }  # fmt: skip


async def test_a_re_executed_request_gets_the_webhook_of_its_first_result_only(
    kafka_bootstrap: str, start_dispatcher: Any
) -> None:
    """First result wins (0003): a re-execution's later result, even with another status,
    sends no second webhook from the dispatcher that delivered the first."""
    receiver = await Receiver(free_port()).start()
    request_id = f"req_it_{uuid.uuid4().hex}"

    async def publish_result(status: str) -> None:
        value = codec.encode("result", _result_of(request_id, status, receiver.url))
        await produce(kafka_bootstrap, topics.RESULTS.name, [(request_id.encode(), value)])

    try:
        await start_dispatcher(config([]))
        await publish_result("failed")
        await publish_result("succeeded")  # the same request, run again elsewhere
        await receiver.wait(1)
        await publish_result("succeeded")  # and again, after the first was delivered
        await asyncio.sleep(2.0)  # time for a second delivery, if there were one
        events = [Webhook(SECRET).verify(body, headers) for headers, body in receiver.received]
        mine = [e["type"] for e in events if e["data"]["id"] == request_id]
        assert mine == ["request.failed"]
    finally:
        await receiver.stop()
