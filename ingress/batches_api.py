"""Batches API (OpenAI-compatible).

    POST /v1/batches               {input_file_id, endpoint, completion_window, metadata}
    GET  /v1/batches/{batch_id}    the Batch object
    GET  /v1/batches               newest first; ?limit=1..100 (20) &after=<batch id>
    POST /v1/batches/{batch_id}/cancel

Creating a batch checks the input file (exists, this team's, purpose batch, at most
`MAX_REQUESTS` requests), with a `Gatekeeper` the caller's governance (the first line's
model approved for the caller, lines under `max_batch_lines`, the team's queue under
`max_queued_requests`: ingress/gatekeeper.py), with budgets the team's hard budgets
(429 `budget_exceeded` when one is spent, 503 when unknown; a warning header when the
estimated cost exceeds what is left: workers/batches/budget.py), and writes the batch's
first state (validating) to the compacted tollway.batch-state with acks=all before
answering; a batch worker then expands and runs it. Reads come from `BatchView`, the
ingress's materialised view of that topic (docs/decisions/0006-batches.md). Every error
is an OpenAI error body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingress.auth import principal_or_open
from ingress.files_api import TeamOf, default_team
from ingress.gatekeeper import Gatekeeper
from ingress.queue_limit import BATCH_LINES_KEY
from schemas.errors import BodyTooLarge, InvalidRequest, MalformedJSON, NotFound, TollwayError
from schemas.records import BatchState
from workers.batches import files
from workers.batches.budget import BatchBudgets, FirstLine, first_line
from workers.batches.expander import count_requests
from workers.batches.filestore import FileStore
from workers.batches.jsonl import MAX_REQUESTS, SUPPORTED_ENDPOINTS, split_lines
from workers.batches.state import (
    CANCELLABLE,
    COMPLETION_WINDOWS_S,
    InvalidMetadata,
    new_batch,
    to_openai,
    validate_metadata,
)
from workers.batches.view import BatchView

MAX_CREATE_BODY_BYTES: Final = 64 * 1024
KEY_ID_KEY: Final = "tollway.key_id"
"""Batch metadata (reserved, hidden from the Batch object): the key that created it."""
BUDGET_WARNING_HEADER: Final = "x-tollway-budget-warning"
DEFAULT_PAGE: Final = 20
MAX_PAGE: Final = 100
_CREATE_FIELDS: Final = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)


class BatchNotCancellable(TollwayError):
    http_status = 409
    error_type = "invalid_request_error"
    code = "batch_not_cancellable"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _json(content: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _first_line(store: FileStore, file_id: str) -> FirstLine | None:
    """The input file's first request line (reads only the file's first chunks; blocking)."""
    return first_line(split_lines(store.chunks(files.content_key(file_id))))


async def _read_json(request: Request) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_CREATE_BODY_BYTES:
            raise BodyTooLarge(f"The request body exceeds {MAX_CREATE_BODY_BYTES} bytes.")
        chunks.append(chunk)
    try:
        body: Any = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(
            f"We could not parse the JSON body of your request ({exc.msg})."
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


class BatchesApi:
    def __init__(
        self,
        store: FileStore,
        view: BatchView,
        *,
        team_of: TeamOf = default_team,
        clock_ms: Callable[[], int] = wall_ms,
        budgets: BatchBudgets | None = None,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        self.store = store
        self.view = view
        self.team_of = team_of
        self.clock_ms = clock_ms
        self.budgets = budgets
        self.gatekeeper = gatekeeper

    async def create(self, request: Request) -> Response:
        team_id = self.team_of(request)
        body = await _read_json(request)
        unknown = sorted(set(body) - _CREATE_FIELDS)
        if unknown:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0]
            )
        endpoint = body.get("endpoint")
        if not isinstance(endpoint, str) or endpoint not in SUPPORTED_ENDPOINTS:
            raise InvalidRequest(
                f"endpoint must be one of {sorted(SUPPORTED_ENDPOINTS)}.", param="endpoint"
            )
        window = body.get("completion_window")
        if not isinstance(window, str) or window not in COMPLETION_WINDOWS_S:
            raise InvalidRequest(
                f"completion_window must be one of {sorted(COMPLETION_WINDOWS_S)}.",
                param="completion_window",
            )
        try:
            metadata = validate_metadata(body.get("metadata"))
        except InvalidMetadata as exc:
            raise InvalidRequest(str(exc), param="metadata") from exc
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str):
            raise InvalidRequest("input_file_id is required.", param="input_file_id")
        meta = await asyncio.to_thread(files.load_meta, self.store, file_id)
        if meta is None or meta["team_id"] != team_id:
            raise NotFound(f"No such File object: {file_id}", param="input_file_id")
        if meta["purpose"] != "batch":
            raise InvalidRequest(
                f"File {file_id} was not uploaded with purpose 'batch'.", param="input_file_id"
            )
        if meta["lines"] > MAX_REQUESTS:
            chunks = self.store.chunks(files.content_key(file_id))
            if await asyncio.to_thread(count_requests, chunks) > MAX_REQUESTS:
                raise InvalidRequest(
                    f"The input file has more than {MAX_REQUESTS} requests; split it.",
                    param="input_file_id",
                )
        metadata, headers = await self._admit(request, team_id, file_id, meta["lines"], metadata)
        state = new_batch(
            batch_id=files.new_batch_id(),
            team_id=team_id,
            input_file_id=file_id,
            endpoint=str(endpoint),
            completion_window=str(window),
            metadata=metadata,
            now_ms=self.clock_ms(),
        )
        await self.view.create(state)
        if self.gatekeeper is not None:
            self.gatekeeper.batch_created(principal_or_open(request.scope))
        return _json(to_openai(state), headers=headers)

    async def _admit(
        self, request: Request, team_id: str, file_id: str, lines: int, metadata: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Governance, then budgets (each raises: nothing is created); returns the batch's
        metadata (with the reserved keys the gatekeeper adds) and the response headers."""
        headers: dict[str, str] = {}
        first: FirstLine | None = None
        if self.gatekeeper is not None:  # 400 / 403 / 429
            principal = principal_or_open(request.scope)
            self.gatekeeper.check_batch(principal, lines, self.clock_ms())
            first = await asyncio.to_thread(_first_line, self.store, file_id)
            if first is not None:
                self.gatekeeper.check_model(principal, first.model, principal.caller.tags)
            metadata = {**metadata, BATCH_LINES_KEY: str(lines)}
            if principal.key_id is not None:
                metadata[KEY_ID_KEY] = principal.key_id
        if self.budgets is not None:  # 429 / 503
            if first is None:
                first = await asyncio.to_thread(_first_line, self.store, file_id)
            warning = self.budgets.admit_create(team_id, first, lines)
            if warning is not None:
                headers[BUDGET_WARNING_HEADER] = warning.encode("ascii", "replace").decode()
        return metadata, headers

    async def _state(self, request: Request) -> BatchState:
        batch_id = request.path_params["batch_id"]
        state = await self.view.get(batch_id) if files.BATCH_ID_RE.fullmatch(batch_id) else None
        if state is None or state["team_id"] != self.team_of(request):
            raise NotFound(f"No such Batch object: {batch_id}", param="batch_id")
        return state

    async def retrieve(self, request: Request) -> Response:
        return _json(to_openai(await self._state(request)))

    async def list(self, request: Request) -> Response:
        raw_limit = request.query_params.get("limit", str(DEFAULT_PAGE))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise InvalidRequest(f"limit must be an integer from 1 to {MAX_PAGE}.", param="limit")
        after = request.query_params.get("after")
        page, has_more = self.view.list(self.team_of(request), int(raw_limit), after)
        data = [to_openai(s) for s in page]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": has_more,
            }
        )

    async def cancel(self, request: Request) -> Response:
        state = await self._state(request)
        if state["status"] in {"cancelling", "cancelled"}:
            return _json(to_openai(state))
        if state["status"] not in CANCELLABLE:
            raise BatchNotCancellable(
                f"Cannot cancel a batch with status {state['status']!r}.", param="batch_id"
            )
        now = self.clock_ms()
        await self.view.cancel(state, now)
        # What the worker will record next (it is the only writer of the state).
        shown = state.copy()
        shown["status"] = "cancelling"
        shown["cancelling_at_ms"] = now
        return _json(to_openai(shown))


def batches_routes(
    store: FileStore,
    view: BatchView,
    *,
    team_of: TeamOf = default_team,
    clock_ms: Callable[[], int] = wall_ms,
    budgets: BatchBudgets | None = None,
    gatekeeper: Gatekeeper | None = None,
) -> list[Route]:
    """The Batches API routes, to be added to the ingress app."""
    api = BatchesApi(
        store, view, team_of=team_of, clock_ms=clock_ms, budgets=budgets, gatekeeper=gatekeeper
    )
    return [
        Route("/v1/batches", api.create, methods=["POST"]),
        Route("/v1/batches", api.list, methods=["GET"]),
        Route("/v1/batches/{batch_id}", api.retrieve, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", api.cancel, methods=["POST"]),
    ]
