"""Anthropic Messages streaming events -> canonical chat.completion.chunk pieces. Pure.

Input: the JSON `data` of each server-sent event of a `stream: true` Messages API
call, in order (field names from the official `anthropic` SDK's RawMessageStreamEvent
types). Output: `StreamPiece`s written by `ChunkWriter` (see chunks.py for the chunk
shape and why each choice's role chunk comes with its first output).

    message_start                  -> id, model and the input-side usage remembered
    content_block_start text       -> (its text, when not empty)
    content_block_delta text_delta -> content delta
    content_block_start tool_use   -> tool_calls delta: index (0, 1, ... over tool_use
                                      blocks only), id, type, name, arguments ""
    content_block_delta input_json_delta
                                   -> tool_calls delta: index, arguments fragment
    content_block_stop (tool_use)  -> the start block's `input` as arguments when no
                                      fragment came (a tool without parameters: "{}")
    message_delta                  -> finish_reason (FINISH_REASONS); its cumulative
                                      usage overrides the message_start usage field by
                                      field (nulls ignored)
    message_stop                   -> the usage chunk (include_usage); the stream is done
    ping, thinking / signature / citations deltas, server-tool and other blocks
                                   -> nothing (OpenAI has no field for them)
    error                          -> a ProviderError: rate_limit_error ->
                                      ProviderRateLimited, timeout_error ->
                                      ProviderTimeout, others (overloaded_error,
                                      api_error...) -> retriable ProviderServerError

A stream that ends before message_stop (`close`) or sends an event this module
cannot read is a ProviderServerError. The router turns any of these errors into
`StreamBroken` once a chunk has reached the client, and fails over otherwise.

Usage follows `usage_from_anthropic`: prompt = input + cache read + cache creation
tokens; cached = cache read; cache_write = cache creation; reasoning = thinking tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from schemas.errors import ProviderError, ProviderRateLimited, ProviderServerError, ProviderTimeout
from schemas.records import Usage
from workers.providers.base import StreamPiece
from workers.providers.chunks import ChunkWriter
from workers.providers.tokens import token_count

FINISH_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
ERROR_STATUSES: Final = {
    "invalid_request_error": 400,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
"""The HTTP status each Anthropic error type answers with before a stream starts."""
_USAGE_FIELDS: Final = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "output_tokens_details",
)


def usage_from_anthropic(usage: Any) -> Usage:
    """Canonical usage from a Messages API `usage` (input tokens exclude cache reads and
    writes there; canonical prompt_tokens includes both)."""
    if not isinstance(usage, dict):
        usage = {}
    fresh = token_count(usage.get("input_tokens"))
    read = token_count(usage.get("cache_read_input_tokens"))
    written = token_count(usage.get("cache_creation_input_tokens"))
    details = usage.get("output_tokens_details") or {}
    return {
        "prompt_tokens": token_count(fresh + read + written),
        "completion_tokens": token_count(usage.get("output_tokens")),
        "cached_tokens": read,
        "reasoning_tokens": token_count(details.get("thinking_tokens")),
        "cache_write_tokens": written,
    }


def stream_error(source: str, error: Any) -> ProviderError:
    """The `ProviderError` for an `error` event's `error` object ({type, message})."""
    error_type = error.get("type") if isinstance(error, dict) else None
    code = error_type if isinstance(error_type, str) else None
    status = ERROR_STATUSES.get(code or "")
    message = f"{source}: the stream reported {code or 'an error'}"
    if status == 429:
        return ProviderRateLimited(message, upstream_code=code)
    if status == 504:
        return ProviderTimeout(message, upstream_status=status, upstream_code=code)
    # Any other error after the 200 is the provider's failure, not the request's.
    return ProviderServerError(message, upstream_status=status, upstream_code=code)


@dataclass(slots=True)
class _ToolBlock:
    call_index: int
    start_input: Any
    arguments_sent: bool = False


class AnthropicStreamTranslator:
    """Translates one Messages API stream; `feed` each event's data, then `close`.

    `requested_model` names the model until message_start reports the served one;
    `source` (the deployment name) prefixes error messages.
    """

    def __init__(
        self, *, source: str, requested_model: str, created_s: int, include_usage: bool
    ) -> None:
        self._source = source
        self._writer = ChunkWriter(
            response_id="", model=requested_model, created_s=created_s, include_usage=include_usage
        )
        self._usage: dict[str, Any] = {}
        self._text_blocks: set[int] = set()
        self._tool_blocks: dict[int, _ToolBlock] = {}
        self._finished = False
        self.done = False
        self._handlers: dict[str, Callable[[Mapping[str, Any]], list[StreamPiece]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "content_block_stop": self._block_stop,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
        }

    def feed(self, event: Mapping[str, Any]) -> list[StreamPiece]:
        """The pieces one event produces, in order. Raises a `ProviderError`."""
        try:
            return self._feed(event)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            kind = event.get("type")
            raise ProviderServerError(f"{self._source}: unreadable {kind!r} stream event") from exc

    def close(self) -> list[StreamPiece]:
        """Check the stream ended properly (after message_stop)."""
        if not self.done:
            raise ProviderServerError(f"{self._source}: the stream ended before message_stop")
        return []

    def _feed(self, event: Mapping[str, Any]) -> list[StreamPiece]:
        kind = event.get("type")
        if kind == "error":
            raise stream_error(self._source, event.get("error"))
        handler = self._handlers.get(str(kind))
        # After message_stop nothing counts; ping and event types Anthropic may add
        # later carry nothing to relay.
        return [] if self.done or handler is None else handler(event)

    def _message_start(self, event: Mapping[str, Any]) -> list[StreamPiece]:
        message = event["message"]
        self._writer.response_id = str(message.get("id") or "")
        self._writer.model = str(message.get("model") or self._writer.model)
        if isinstance(message.get("usage"), dict):
            self._usage = dict(message["usage"])
        usage_from_anthropic(self._usage)  # unusable counts fail here, before any output
        return []

    def _block_start(self, event: Mapping[str, Any]) -> list[StreamPiece]:
        index, block = int(event["index"]), event["content_block"]
        if block["type"] == "text":
            self._text_blocks.add(index)
            return self._writer.content(0, str(block.get("text") or ""))
        if block["type"] == "tool_use":
            tool = _ToolBlock(len(self._tool_blocks), block.get("input"))
            self._tool_blocks[index] = tool
            return self._writer.tool_call_start(
                0, tool.call_index, str(block["id"]), str(block["name"])
            )
        return []  # thinking, redacted_thinking, server tools and their results

    def _block_delta(self, event: Mapping[str, Any]) -> list[StreamPiece]:
        index, delta = int(event["index"]), event["delta"]
        kind = delta["type"]
        if kind == "text_delta" and index in self._text_blocks:
            return self._writer.content(0, str(delta["text"]))
        tool = self._tool_blocks.get(index)
        if kind == "input_json_delta" and tool is not None:
            fragment = str(delta["partial_json"])
            tool.arguments_sent = tool.arguments_sent or bool(fragment)
            return self._writer.tool_arguments(0, tool.call_index, fragment)
        return []

    def _block_stop(self, event: Mapping[str, Any]) -> list[StreamPiece]:
        tool = self._tool_blocks.get(int(event["index"]))
        if tool is None or tool.arguments_sent:
            return []
        tool.arguments_sent = True
        arguments = orjson.dumps(tool.start_input or {}).decode()
        return self._writer.tool_arguments(0, tool.call_index, arguments)

    def _message_delta(self, event: Mapping[str, Any]) -> list[StreamPiece]:
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._usage.update(
                {name: usage[name] for name in _USAGE_FIELDS if usage.get(name) is not None}
            )
        usage_from_anthropic(self._usage)
        stop_reason = (event.get("delta") or {}).get("stop_reason")
        if stop_reason is None or self._finished:
            return []
        self._finished = True
        return self._writer.finish(0, FINISH_REASONS.get(str(stop_reason), "stop"))

    def _message_stop(self, _event: Mapping[str, Any]) -> list[StreamPiece]:
        self.done = True
        pieces = [] if self._finished else self._writer.finish(0, "stop")
        self._finished = True
        pieces.extend(self._writer.usage(usage_from_anthropic(self._usage)))
        return pieces
