"""Anthropic Messages API wire format for the mock provider: pure reader and renderers.

Input: a parsed ``POST /v1/messages`` body, then the ``behaviour.decide`` outcome.
Output: the request fields ``decide`` reads, and ``(status, body, headers)`` shaped
as Anthropic's ``message`` and error objects. Behaviours keep their meaning, each in
Anthropic's own dialect:

=========================  ===========================================================
outcome                    answer
=========================  ===========================================================
completion                 200 ``message``, stop_reason ``end_turn`` / ``max_tokens``
``mock-429-<s>``           429 ``rate_limit_error`` with ``retry-after: <s>``
``mock-error-529``         529 ``overloaded_error`` (any status keeps its Anthropic type)
``mock-context-window``    400 ``invalid_request_error`` "prompt is too long: ..."
``mock-content-filter``    200 ``message`` with stop_reason ``refusal``, no content
=========================  ===========================================================

As the real API does, a request without ``max_tokens`` answers 400.

``stream: true`` (``render_stream``): a normal completion or a refusal streams as
the Messages API's events - ``message_start`` (input tokens, cache counts 0),
``content_block_start`` text, ``ping``, one ``content_block_delta`` ``text_delta``
per word (a leading space on all but the first), ``content_block_stop``,
``message_delta`` (stop_reason, cumulative output tokens), ``message_stop``; a
refusal has no content block. Errors answer before the stream, as JSON, with the
status of the table above. Framing (``event:`` + ``data:`` lines) is the server's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from workers.providers.mock.behaviour import (
    Answer,
    Failure,
    Outcome,
    estimate_prompt_tokens,
    invalid_request,
)
from workers.providers.mock.stream_plan import StreamPlan

JsonObject = dict[str, object]
Rendered = tuple[int, JsonObject, tuple[tuple[str, str], ...]]

CONTEXT_WINDOW_TOKENS: Final = 200_000
"""The context window the mock's "prompt is too long" message names, in tokens."""

ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP_REASONS: Final = {"stop": "end_turn", "length": "max_tokens"}
_EMPTY_TEXT: Final[JsonObject] = {"type": "text", "text": ""}


def read_request(body: Mapping[str, object]) -> dict[str, object] | Failure:
    """The fields ``decide`` reads, or the 400 the real API gives this body.

    The system prompt counts towards the prompt tokens, as a leading message.
    """
    if "max_tokens" not in body:
        return invalid_request("max_tokens: Field required", "max_tokens")
    messages = body.get("messages")
    system = body.get("system")
    if isinstance(messages, list) and system:
        messages = [{"role": "system", "content": system}, *messages]
    fields: dict[str, object] = {"messages": messages, "max_tokens": body["max_tokens"]}
    if body.get("stream") is True:
        fields["stream"] = True
    return fields


def render(
    outcome: Outcome, request: Mapping[str, object], model: str, message_id: str
) -> Rendered:
    """The HTTP status, JSON body and headers answering ``outcome``."""
    if isinstance(outcome, Answer):
        reply = outcome.reply
        body = message_body(
            message_id,
            model,
            reply.content,
            stop_reason=_STOP_REASONS[reply.finish_reason],
            input_tokens=reply.prompt_tokens,
            output_tokens=reply.completion_tokens,
        )
        return 200, body, outcome.headers
    if outcome.code == "content_filter":
        messages = request.get("messages")
        prompt_tokens = estimate_prompt_tokens(messages if isinstance(messages, list) else [])
        refusal = message_body(
            message_id,
            model,
            None,
            stop_reason="refusal",
            input_tokens=prompt_tokens,
            output_tokens=0,
        )
        return 200, refusal, ()
    return outcome.status, error_body(outcome), outcome.headers


def render_stream(
    outcome: Outcome, request: Mapping[str, object], model: str, message_id: str
) -> Rendered | StreamPlan:
    """The events of a streamed answer (and how many go out at once first: those up to
    the first word), or the rendered error to answer instead of a stream."""
    if isinstance(outcome, Answer):
        reply = outcome.reply
        deltas: list[JsonObject] = [
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": word if n == 0 else f" {word}"},
            }
            for n, word in enumerate(reply.words)
        ]
        events: list[JsonObject] = [
            _message_start(message_id, model, reply.prompt_tokens),
            {"type": "content_block_start", "index": 0, "content_block": _EMPTY_TEXT},
            {"type": "ping"},
            *deltas,
            {"type": "content_block_stop", "index": 0},
            _message_delta(_STOP_REASONS[reply.finish_reason], reply.completion_tokens),
            {"type": "message_stop"},
        ]
        return StreamPlan(events, 4)
    if outcome.code != "content_filter":
        return outcome.status, error_body(outcome), outcome.headers
    messages = request.get("messages")
    prompt_tokens = estimate_prompt_tokens(messages if isinstance(messages, list) else [])
    refusal: list[JsonObject] = [
        _message_start(message_id, model, prompt_tokens),
        _message_delta("refusal", 0),
        {"type": "message_stop"},
    ]
    return StreamPlan(refusal, len(refusal))


def _message_start(message_id: str, model: str, input_tokens: int) -> JsonObject:
    message = message_body(
        message_id, model, None, stop_reason=None, input_tokens=input_tokens, output_tokens=1
    )
    return {"type": "message_start", "message": message}


def _message_delta(stop_reason: str, output_tokens: int) -> JsonObject:
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }


def message_body(
    message_id: str,
    model: str,
    text: str | None,
    *,
    stop_reason: str | None,
    input_tokens: int,
    output_tokens: int,
) -> JsonObject:
    """A Messages API ``message`` (no prompt cache in the mock: cache counts are 0);
    a stream's ``message_start`` carries one with no stop_reason yet."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [] if text is None else [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }


def error_body(failure: Failure) -> JsonObject:
    """Anthropic's ``{"type": "error", "error": {"type", "message"}}``."""
    message = failure.message
    if failure.code == "context_length_exceeded":
        message = (
            f"prompt is too long: {CONTEXT_WINDOW_TOKENS + 1} tokens > "
            f"{CONTEXT_WINDOW_TOKENS} maximum"
        )
    default = "api_error" if failure.status >= 500 else "invalid_request_error"
    error_type = ERROR_TYPES.get(failure.status, default)
    return {"type": "error", "error": {"type": error_type, "message": message}}
