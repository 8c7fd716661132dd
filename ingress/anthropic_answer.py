"""The canonical OpenAI answer -> Anthropic's Message, stream events and errors. Pure.

The answer side of `ingress/anthropic_format.py`; field names follow the official
`anthropic` SDK's types (Message, Usage, RawMessageStreamEvent, ErrorResponse).

    chat.completion      -> Message: text and tool_use blocks (arguments parsed to
                            `input`), finish_reason -> stop_reason, usage
    usage                -> input_tokens = prompt - cache read - cache creation (the
                            inverse of the outbound adapter's sum), output_tokens,
                            cache_read_input_tokens, cache_creation_input_tokens
    chat.completion.chunk-> `StreamTranslator`: message_start, content_block_start /
                            _delta (text_delta, input_json_delta) / _stop, message_delta
                            (stop_reason, usage), message_stop
    OpenAI error body    -> {"type": "error", "error": {type, message}} with the same
                            HTTP status, the type chosen by that status

OpenAI's finish_reason does not say whether a stop sequence matched, so stop_reason is
end_turn then and `stop_sequence` is always null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from schemas.errors import ProviderBadRequest, ProviderServerError
from workers.providers import canonical
from workers.providers.canonical import JsonObject

STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
"""OpenAI finish_reason -> Anthropic stop_reason (the outbound FINISH_REASONS, inverted)."""
ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""HTTP status -> Anthropic error `type`; other 4xx are invalid_request_error, 5xx api_error."""


# --- canonical answer -> Message -------------------------------------------------------


def message_id(request_id: str) -> str:
    """The Message `id` for a Tollway request id (req_X -> msg_X)."""
    return "msg_" + request_id.removeprefix("req_")


def stop_reason(finish_reason: Any) -> str | None:
    if finish_reason is None:
        return None
    return STOP_REASONS.get(str(finish_reason), "end_turn")


def usage_from_openai(usage: Any, cache_write_tokens: int = 0) -> JsonObject:
    """Anthropic usage from an OpenAI `usage`; `cache_write_tokens` comes from the result
    record (OpenAI's usage has no field for cache writes; both count them in prompt)."""
    usage = usage if isinstance(usage, dict) else {}
    details = usage.get("prompt_tokens_details") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int(details.get("cached_tokens") or 0)
    return {
        "input_tokens": max(0, prompt - cached - cache_write_tokens),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": cache_write_tokens,
    }


def tool_input(name: str, arguments: Any) -> JsonObject:
    """A tool call's arguments as the `input` object; a model answer whose arguments are
    not a JSON object cannot be expressed as a tool_use block (502)."""
    try:
        return canonical.tool_arguments(arguments, "tool_calls")
    except ProviderBadRequest as exc:
        raise ProviderServerError(
            f"the model's arguments for tool {name!r} are not a JSON object"
        ) from exc


def to_message(
    completion: Mapping[str, Any], *, message_id: str, cache_write_tokens: int = 0
) -> JsonObject:
    """The Anthropic Message for a canonical `chat.completion` (its first choice)."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    texts = (canonical.text_of(message.get("content")), message.get("refusal"))
    content: list[JsonObject] = [
        {"type": "text", "text": t} for t in texts if isinstance(t, str) and t
    ]
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        name = str(function.get("name") or "")
        content.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or ""),
                "name": name,
                "input": tool_input(name, function.get("arguments")),
            }
        )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": str(completion.get("model") or ""),
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason")) or "end_turn",
        "stop_sequence": None,
        "usage": usage_from_openai(completion.get("usage"), cache_write_tokens),
    }


# --- errors ----------------------------------------------------------------------------


def error_type(http_status: int) -> str:
    if http_status in ERROR_TYPES:
        return ERROR_TYPES[http_status]
    return "invalid_request_error" if 400 <= http_status < 500 else "api_error"


def error_body(http_status: int, message: str, request_id: str | None = None) -> JsonObject:
    """Anthropic's ErrorResponse: {"type": "error", "error": {type, message}, request_id}."""
    body: JsonObject = {
        "type": "error",
        "error": {"type": error_type(http_status), "message": message},
    }
    if request_id is not None:
        body["request_id"] = request_id
    return body


def error_from_openai(
    openai_body: bytes, http_status: int, request_id: str | None = None
) -> JsonObject:
    """An OpenAI error body (as a failed result carries it) in Anthropic's format."""
    try:
        error = orjson.loads(openai_body).get("error")
        message = str(error["message"])
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        message = f"The request failed with HTTP status {http_status}."
    return error_body(http_status, message, request_id)


# --- streaming -------------------------------------------------------------------------


def sse(event: Mapping[str, Any]) -> bytes:
    """One server-sent event as Anthropic frames it: `event: <type>` and the JSON data."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class StreamTranslator:
    """OpenAI `chat.completion.chunk` objects in, Anthropic stream events out, in order.

    message_start comes with the first chunk (input tokens are not known before the
    usage chunk, so they arrive in message_delta, which the SDK applies). Each run of
    text and each tool call is one content block; a block is closed when another
    starts and never reopened (OpenAI streams the calls one after another). Only the
    first choice is translated: Anthropic has no `n`.
    """

    def __init__(self, message_id: str, model: str) -> None:
        self._message_id = message_id
        self._model = model
        self._started = False
        self._index = -1
        self._open: tuple[str, int] | None = None
        self._finish_reason: Any = None
        self._usage: Any = None

    def feed(self, chunk: Mapping[str, Any]) -> list[JsonObject]:
        events = self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            for text in (delta.get("content"), delta.get("refusal")):
                if isinstance(text, str) and text:
                    events += self._switch(("text", 0), {"type": "text", "text": ""})
                    events.append(self._delta({"type": "text_delta", "text": text}))
            for position, call in enumerate(delta.get("tool_calls") or ()):
                events += self._tool_call(call, position)
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        return events

    def finish(self, cache_write_tokens: int = 0) -> list[JsonObject]:
        """The closing events: the open block's stop, message_delta, message_stop."""
        events = [*self._start({}), *self._close()]
        events.append(
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason(self._finish_reason) or "end_turn",
                    "stop_sequence": None,
                },
                "usage": usage_from_openai(self._usage, cache_write_tokens),
            }
        )
        events.append({"type": "message_stop"})
        return events

    def _start(self, chunk: Mapping[str, Any]) -> list[JsonObject]:
        if self._started:
            return []
        self._started = True
        message: JsonObject = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": str(chunk.get("model") or self._model),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [{"type": "message_start", "message": message}]

    def _tool_call(self, call: Mapping[str, Any], position: int) -> list[JsonObject]:
        # A whole message relayed as one chunk carries calls without `index`.
        number = call["index"] if isinstance(call.get("index"), int) else position
        function = call.get("function") or {}
        events: list[JsonObject] = []
        if self._open != ("tool", number):
            block = {
                "type": "tool_use",
                "id": str(call.get("id") or f"toolu_{number}"),
                "name": str(function.get("name") or ""),
                "input": {},
            }
            events += self._switch(("tool", number), block)
        if arguments := function.get("arguments"):
            events.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return events

    def _switch(self, key: tuple[str, int], block: JsonObject) -> list[JsonObject]:
        if self._open == key:
            return []
        events = self._close()
        self._index += 1
        self._open = key
        events.append({"type": "content_block_start", "index": self._index, "content_block": block})
        return events

    def _close(self) -> list[JsonObject]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self._index}]

    def _delta(self, delta: JsonObject) -> JsonObject:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}
