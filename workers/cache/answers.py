"""A cache hit as the router's records: the Result, the Attempt, the stream. Pure.

A hit makes no provider call, so it costs nothing; what it saved is what the cached
call cost. It reaches the cost processor as an `Attempt` with outcome `cache_hit`
(schema attempt.v3): deployment `cache`, the provider and upstream model that made the
answer (the price key) and the answer's token counts, which workers/cost/usage.py
prices as `saved_nano_usd` at cost 0 (`cost_status = cache_hit`). The `Result` carries
zero tokens (no tokens were consumed) and `attempts = 0` (no provider calls); its
metadata says `tollway.cache = hit | semantic-hit`, which the ingress turns into the
`x-tollway-cache` header and the loader into `requests.cache_hit`.

A streamed request is answered with the stored completion cut into
`chat.completion.chunk`s (role, content in pieces, tool calls, finish reason, and the
usage chunk when the client asked for it), relayed like a provider's stream.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from schemas.records import ZERO_USAGE, Attempt, RequestEnvelope, Result
from workers.cache.store import CachedAnswer
from workers.providers.chunks import ChunkWriter

CACHE_DEPLOYMENT: Final = "cache"
"""The `deployment` of a hit's Result and Attempt."""
REPLAY_PIECE_CHARS: Final = 256
"""Content is replayed in pieces of about this many characters (cut at spaces)."""


def hit_result(
    envelope: RequestEnvelope,
    answer: CachedAnswer,
    *,
    status: str,
    execution_id: str,
    now_ms: int,
) -> Result:
    return {
        "request_id": envelope["request_id"],
        "team_id": envelope["team_id"],
        "key_id": envelope["key_id"],
        "mode": envelope["mode"],
        "execution_id": execution_id,
        "status": "succeeded",
        "http_status": 200,
        "body": answer.body,
        "error_type": None,
        "requested_model": envelope["model"],
        "served_model": answer.served_model,
        "provider": answer.provider,
        "deployment": CACHE_DEPLOYMENT,
        "attempts": 0,
        **ZERO_USAGE,
        "received_at_ms": envelope["received_at_ms"],
        "finished_at_ms": now_ms,
        "metadata": {**envelope["metadata"], "tollway.cache": status},
    }


def hit_attempt(
    envelope: RequestEnvelope,
    answer: CachedAnswer,
    *,
    execution_id: str,
    router_id: str,
    started_ms: int,
    latency_ms: float,
) -> Attempt:
    return {
        "request_id": envelope["request_id"],
        "attempt_id": f"{execution_id}.1",
        "attempt": 1,
        "team_id": envelope["team_id"],
        "key_id": envelope["key_id"],
        "mode": envelope["mode"],
        "deployment": CACHE_DEPLOYMENT,
        "provider": answer.provider,
        "model": answer.upstream_model,
        "started_at_ms": started_ms,
        "latency_ms": latency_ms,
        "outcome": "cache_hit",
        "http_status": 200,
        "error_type": None,
        "error_code": None,
        **answer.usage,
        "router_id": router_id,
    }


def _pieces(text: str) -> list[str]:
    """`text` in consecutive pieces of about REPLAY_PIECE_CHARS, cut after a space."""
    out: list[str] = []
    start = 0
    while start < len(text):
        end = start + REPLAY_PIECE_CHARS
        if end < len(text):
            space = text.rfind(" ", start + 1, end)
            end = space + 1 if space > start else end
        out.append(text[start:end])
        start = end
    return out


def replay_chunks(body: bytes, answer: CachedAnswer, *, include_usage: bool) -> list[bytes]:
    """The `chat.completion.chunk` JSONs that stream the stored completion `body`."""
    completion: dict[str, Any] = orjson.loads(body)
    writer = ChunkWriter(
        response_id=str(completion.get("id") or ""),
        model=str(completion.get("model") or answer.served_model),
        created_s=int(completion.get("created") or answer.created_at_ms // 1000),
        include_usage=include_usage,
    )
    chunks: list[bytes] = []
    for position, choice in enumerate(completion.get("choices") or ()):
        index = int(choice.get("index", position))
        message = choice.get("message") or {}
        content = message.get("content")
        pieces = (
            [p.data for t in _pieces(content) for p in writer.content(index, t)]
            if isinstance(content, str)
            else []
        )
        chunks.extend(pieces)
        for call_index, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") or {}
            chunks.extend(
                p.data
                for p in writer.tool_call_start(
                    index,
                    call_index,
                    str(call.get("id") or ""),
                    str(function.get("name") or ""),
                    str(function.get("arguments") or ""),
                )
            )
        chunks.extend(
            p.data for p in writer.finish(index, str(choice.get("finish_reason") or "stop"))
        )
    chunks.extend(p.data for p in writer.usage(answer.usage))
    return chunks
