"""ASGI middleware: one server span per HTTP request, the root of the request's trace.

Installed around the whole ingress app (ingress/server.py) only when tracing is on
(`with_server_spans` returns the app itself otherwise: no cost when off). A client's
own `traceparent` header is honoured (its trace continues through Tollway). The span
is named `<METHOD> <route>`, the route being the path with its parameters put back
as `{name}` (`GET /v1/async/requests/{request_id}`), so ids never become span names.
The request id, once the handler made one, is an attribute (`tollway.request_id`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from workers.telemetry import tracing
from workers.telemetry.logs import current_request_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def route_of(path: str, path_params: dict[str, Any] | None) -> str:
    """`path` with each path parameter's value replaced by `{name}`. Pure."""
    route = path
    for name, value in (path_params or {}).items():
        text = str(value)
        if text:
            route = route.replace(f"/{text}", f"/{{{name}}}", 1)
    return route


class ServerSpans:
    """The middleware (see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        headers = [(k.decode("latin-1"), v) for k, v in scope.get("headers", ())]
        status = 500

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with tracing.start_span(
            method,
            kind="server",
            headers=headers,
            attributes={"http.request.method": method, "url.path": scope.get("path")},
        ) as span:
            try:
                await self.app(scope, receive, send_seen)
            finally:
                if span is not None:
                    route = route_of(scope.get("path", ""), scope.get("path_params"))
                    span.update_name(f"{method} {route}")
                    tracing.set_attributes(
                        {
                            "http.route": route,
                            "http.response.status_code": status,
                            "tollway.request_id": current_request_id(),
                        }
                    )
                    if status >= 500:
                        tracing.mark_error(str(status))


def with_server_spans(app: ASGIApp) -> ASGIApp:
    """`app` wrapped in `ServerSpans` when tracing is on; `app` itself when it is off."""
    return ServerSpans(app) if tracing.enabled() else app
