"""ASGI middleware counting the ingress's HTTP requests (`tollway_http_*` series).

Installed outermost (ingress/server.py), so every answer is counted: 401s from the
authentication middleware and replays of the Idempotency-Key middleware included.
The `route` label is the path's route family (`metrics_labels.route_family`), never
the raw path, so ids in paths cannot open new series. Streamed responses are timed
to their last body message.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from workers.telemetry.metrics import HttpMetrics, http_metrics
from workers.telemetry.metrics_labels import route_family, status_class

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics or http_metrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        route = route_family(scope["path"])
        status = 500  # no response started: the server answers 500
        started = time.perf_counter()

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_counted)
        finally:
            metrics.in_flight.dec()
            metrics.requests.labels(route, status_class(status)).inc()
            metrics.duration.labels(route).observe(time.perf_counter() - started)
