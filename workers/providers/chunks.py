"""Writing canonical `chat.completion.chunk` pieces for translated streams. Pure.

The Anthropic and Gemini stream translators read their provider's events and call
`ChunkWriter` to say what happened (some text, a tool-call fragment, a finish
reason, the usage); it writes the OpenAI chunks a client of Chat Completions
streaming expects, as `StreamPiece`s ready to relay:

    {"id", "object": "chat.completion.chunk", "created", "model",
     "system_fingerprint": null,
     "choices": [{"index", "delta", "logprobs": null, "finish_reason"}],
     "usage": null}                    <- "usage" only with stream_options.include_usage,
                                          then null on every chunk but the last
    ... the last: "choices": [], "usage": {...}

Role first, but late: each choice's `{"role": "assistant", "content": ""}` chunk is
written just before that choice's first output, not when the provider opens its
stream. Until a chunk reaches the client the router may still fail over, so an
error event that a provider sends before any output (Anthropic's mid-stream
`overloaded_error`) stays retriable instead of breaking a stream the client has
already seen start.
"""

from __future__ import annotations

from typing import Any

import orjson

from schemas.records import Usage
from workers.providers.base import StreamPiece
from workers.providers.canonical import JsonObject, usage_object


class ChunkWriter:
    """The chunks of one streamed response. `created_s` is Unix seconds.

    `response_id` and `model` may be set later (they arrive in the provider's first
    event); chunks written before that carry what was known then.
    """

    __slots__ = ("_include_usage", "_started", "created_s", "model", "response_id")

    def __init__(
        self, *, response_id: str, model: str, created_s: int, include_usage: bool
    ) -> None:
        self.response_id = response_id
        self.model = model
        self.created_s = created_s
        self._include_usage = include_usage
        self._started: set[int] = set()

    @property
    def started(self) -> bool:
        """Whether any choice has written output (so a failure now breaks the stream)."""
        return bool(self._started)

    def content(self, index: int, text: str) -> list[StreamPiece]:
        """A content delta for choice `index` (nothing for empty text)."""
        return self._delta(index, {"content": text}) if text else []

    def tool_call_start(
        self, index: int, call_index: int, call_id: str, name: str, arguments: str = ""
    ) -> list[StreamPiece]:
        """The first fragment of tool call `call_index`: its id, name and any arguments."""
        call: JsonObject = {
            "index": call_index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        return self._delta(index, {"tool_calls": [call]})

    def tool_arguments(self, index: int, call_index: int, fragment: str) -> list[StreamPiece]:
        """More of a tool call's arguments JSON (nothing for an empty fragment)."""
        if not fragment:
            return []
        call: JsonObject = {"index": call_index, "function": {"arguments": fragment}}
        return self._delta(index, {"tool_calls": [call]})

    def finish(self, index: int, finish_reason: str) -> list[StreamPiece]:
        """The empty delta that carries choice `index`'s finish reason."""
        return self._delta(index, {}, finish_reason)

    def usage(self, usage: Usage) -> list[StreamPiece]:
        """The usage-only chunk (empty `choices`), its piece carrying `usage` for billing.

        Nothing without include_usage, as OpenAI sends nothing then (the router
        always asks upstream for usage).
        """
        if not self._include_usage:
            return []
        chunk = self._chunk([])
        chunk["usage"] = usage_object(usage)
        return [StreamPiece(orjson.dumps(chunk), usage)]

    def _delta(
        self, index: int, delta: JsonObject, finish_reason: str | None = None
    ) -> list[StreamPiece]:
        pieces: list[StreamPiece] = []
        if index not in self._started:
            self._started.add(index)
            pieces.append(self._piece(index, {"role": "assistant", "content": ""}, None))
        pieces.append(self._piece(index, delta, finish_reason))
        return pieces

    def _piece(self, index: int, delta: JsonObject, finish_reason: str | None) -> StreamPiece:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return StreamPiece(orjson.dumps(self._chunk([choice])))

    def _chunk(self, choices: list[Any]) -> JsonObject:
        chunk: JsonObject = {
            "id": self.response_id,
            "object": "chat.completion.chunk",
            "created": self.created_s,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = None
        return chunk
