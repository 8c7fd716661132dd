"""POST /v1/async/bulk/chat/completions: many async chat completions in one HTTP call.

    in:  {"requests": [<async chat completion body>, ...]}   (ingress/bulk.py)
    out: tollway.requests.interactive, one record per admitted item (acks=all)
    answer: 202, one entry per item in order: its request id, or its own error

Why: one HTTP request per async submission costs the ingress more CPU in HTTP than in
admission and publishing; a call of hundreds of items pays the HTTP part once
(docs/decisions/0022-bulk-async-submission.md).

Each item is admitted exactly as one POST /v1/async/chat/completions would be
(`Ingress.prepare`: body size, schema, model, policies, wallet caps, the team's async
queue cap, budgets, `callback_url`), for the caller's principal and the call's headers
(end user, tags, Cache-Control). The items admitted are then published together
(`Ingress.publish`, concurrently: the producer batches them), and each item's entry
reports its own outcome.

Guarantee: every item is either durably written to Kafka (acks=all) and listed with its
id, or refused with its error (a failed write is that item's 503; as on the single
endpoint, a timed-out write may still land, and then runs though it was refused) —
never accepted without a record. An item refused for any reason publishes nothing.

Not supported: `Idempotency-Key` (400: a retry would need per-item keys; retry only
the refused items instead), streaming items (a refused item, as on the single endpoint).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ingress.app import Ingress, Prepared, json_response, read_body, take_callback_url
from ingress.auth import Principal
from ingress.bulk import BULK_PATH, bulk_answer, error_entry, parse_bulk_body, queued_entry
from ingress.gatekeeper import RequestContext
from ingress.idempotency import HEADER as IDEMPOTENCY_HEADER
from schemas.errors import BodyTooLarge, InvalidRequest, ServiceUnavailable, TollwayError
from workers.cache.canonical import cache_control_metadata
from workers.telemetry.metrics import error_metrics

log = logging.getLogger("tollway.ingress.bulk")


class BulkSubmitter:
    """The bulk handler over one `Ingress` (its settings, admission and bus)."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress

    def routes(self) -> list[BaseRoute]:
        return [Route(BULK_PATH, self.handle, methods=["POST"])]

    async def handle(self, request: Request) -> Response:
        if IDEMPOTENCY_HEADER in request.headers:
            raise InvalidRequest(
                "Idempotency-Key is not supported on the bulk endpoint: retry only the items "
                "that were refused.",
                param=IDEMPOTENCY_HEADER,
            )
        settings = self.ingress.settings
        body = await read_body(request, settings.bulk_max_body_bytes)
        items = parse_bulk_body(body, settings.bulk_max_items)
        principal, context = self.ingress.identify(request)
        cache = cache_control_metadata(request.headers.get("cache-control"))
        headers: dict[str, str] = {}  # a budget warning, as on the single endpoint
        entries = await self.submit(items, principal, context, cache, headers)
        return json_response(bulk_answer(entries), 202, headers)

    async def submit(
        self,
        items: list[dict[str, Any]],
        principal: Principal,
        context: RequestContext,
        cache: Mapping[str, str],
        headers: dict[str, str],
    ) -> list[dict[str, Any]]:
        """One entry per item, in order: prepare each, then publish the admitted together."""
        entries: list[dict[str, Any] | None] = [None] * len(items)
        prepared: list[tuple[int, Prepared]] = []
        try:
            for index, item in enumerate(items):
                try:
                    ready = self._prepare(item, principal, context, cache, headers)
                except TollwayError as exc:
                    entries[index] = self._refused(index, exc)
                else:
                    prepared.append((index, ready))
        except BaseException:  # a bug in admission: give back the queue slots taken so far
            for _, ready in prepared:
                self.ingress.gatekeeper.async_released(ready.principal, ready.request_id)
            raise
        outcomes = await asyncio.gather(
            *(self.ingress.publish(ready) for _, ready in prepared), return_exceptions=True
        )
        for (index, ready), outcome in zip(prepared, outcomes, strict=True):
            if outcome is None:
                entries[index] = queued_entry(index, ready.request_id)
            elif isinstance(outcome, TollwayError):
                entries[index] = self._refused(index, outcome)
            else:  # not ours: never echo internals (the type name finds the log line)
                log.error("bulk item %s not published", index, exc_info=outcome)
                entries[index] = self._refused(
                    index,
                    ServiceUnavailable(
                        "The request could not be written to Kafka and was not accepted "
                        f"({type(outcome).__name__}); retry later.",
                        retry_after_s=1,
                    ),
                )
        done = [entry for entry in entries if entry is not None]
        assert len(done) == len(items), "every item has its entry"
        return done

    def _prepare(
        self,
        item: dict[str, Any],
        principal: Principal,
        context: RequestContext,
        cache: Mapping[str, str],
        headers: dict[str, str],
    ) -> Prepared:
        """Admit one item as POST /v1/async/chat/completions admits its body."""
        try:
            body = orjson.dumps(item)
        except orjson.JSONEncodeError as exc:  # deeper than orjson writes (254 levels)
            raise InvalidRequest("The request is nested too deeply.") from exc
        limit = self.ingress.settings.max_body_bytes
        if len(body) > limit:  # one record on the request topic, as a single request
            raise BodyTooLarge(f"The request exceeds the limit of {limit} bytes per request.")
        extra: dict[str, str] = {}
        if b'"callback_url"' in body:
            body, extra = take_callback_url(body, "async")
        extra.update(cache)
        return self.ingress.prepare(
            body,
            "async",
            principal=principal,
            context=context,
            extra_metadata=extra,
            response_headers=headers,
        )

    @staticmethod
    def _refused(index: int, error: TollwayError) -> dict[str, Any]:
        error_metrics().count(type(error).__name__)  # as error_response counts a refusal
        return error_entry(index, error)


def bulk_routes(ingress: Ingress) -> list[BaseRoute]:
    """The bulk route, for `build_app(..., extra_routes=[..., bulk_routes])`."""
    return BulkSubmitter(ingress).routes()
