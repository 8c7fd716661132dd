"""A webhook receiver on loopback that records every delivery the dispatcher makes.

Each POST is verified as a Standard Webhooks receiver would (the `standardwebhooks`
package and the stack's signing secret) and kept as a `Delivery`: the webhook id, the
event type and the id it is about (an async request id, or a batch id). While
`failing` is set it answers 503 without recording anything, so the dispatcher's retry
path (tollway.callbacks.retry) is exercised. The dispatcher reaches it only with the
development allow-list (`TOLLWAY_CALLBACKS_ALLOW_HTTP`, `..._ALLOW_NETWORKS`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

PATH = "/hook"


@dataclass(frozen=True, slots=True)
class Delivery:
    webhook_id: str
    event_type: str
    subject_id: str
    """`data.id`: the async request id, or the batch id of a batch event."""
    status: str
    verified: bool
    at_s: float


@dataclass
class Receiver:
    secret: str
    port: int
    failing: bool = False
    deliveries: list[Delivery] = field(default_factory=list)
    refused_while_failing: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(PATH, self._on_post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _on_post(self, request: web.Request) -> web.Response:
        if self.failing:
            self.refused_while_failing += 1
            return web.Response(status=503)
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        event = orjson.loads(body)
        data = event.get("data") or {}
        self.deliveries.append(
            Delivery(
                webhook_id=headers.get("webhook-id", ""),
                event_type=str(event.get("type", "")),
                subject_id=str(data.get("id", "")),
                status=str(data.get("status", "")),
                verified=verified,
                at_s=time.monotonic(),
            )
        )
        return web.Response(status=204)

    def by_subject(self) -> dict[str, list[Delivery]]:
        grouped: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in self.deliveries:
            grouped[delivery.subject_id].append(delivery)
        return grouped
