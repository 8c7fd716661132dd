"""Gemini generateContent wire format for the mock provider: pure reader and renderers.

Input: a parsed ``POST /v1beta/models/{model}:generateContent`` body, then the
``behaviour.decide`` outcome. Output: the request fields ``decide`` reads, and
``(status, body, headers)`` shaped as Gemini's GenerateContentResponse and
google.rpc.Status error objects. Behaviours keep their meaning in Gemini's dialect:

=========================  ===========================================================
outcome                    answer
=========================  ===========================================================
completion                 200 one candidate, finishReason ``STOP`` / ``MAX_TOKENS``
``mock-429-<s>``           429 ``RESOURCE_EXHAUSTED`` with RetryInfo ``retryDelay: <s>s``
                           (Gemini sends no Retry-After header)
``mock-error-<status>``    ``<status>`` with its canonical status name
``mock-context-window``    400 ``INVALID_ARGUMENT`` "The input token count ... exceeds
                           the maximum number of tokens allowed ..."
``mock-content-filter``    200 with ``promptFeedback.blockReason: SAFETY``, no candidates
=========================  ===========================================================

``:streamGenerateContent?alt=sse`` (``render_stream``): a completion streams as one
GenerateContentResponse per word (a leading space on all but the first), each with
the running ``usageMetadata``, the last with ``finishReason``; a blocked prompt is
its one event; errors answer before the stream, as JSON. ``data:`` framing is the
server's (Gemini sends no ``event:`` names and no end sentinel).
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

CONTEXT_WINDOW_TOKENS: Final = 1_048_576
"""The context window the mock's over-long-prompt message names, in tokens."""
RETRY_INFO_TYPE: Final = "type.googleapis.com/google.rpc.RetryInfo"

STATUS_NAMES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_FINISH_REASONS: Final = {"stop": "STOP", "length": "MAX_TOKENS"}


def read_request(body: Mapping[str, object]) -> dict[str, object] | Failure:
    """The fields ``decide`` reads, or the 400 the real API gives this body.

    Roles ``model`` become ``assistant``; the system instruction counts towards the
    prompt tokens, as a leading message.
    """
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return invalid_request(
            "* GenerateContentRequest.contents: contents is not specified", "contents"
        )
    messages: list[object] = [
        {
            "role": "assistant" if content.get("role") == "model" else "user",
            "content": content.get("parts"),
        }
        for content in contents
        if isinstance(content, dict)
    ]
    system = body.get("systemInstruction")
    if isinstance(system, dict):
        messages.insert(0, {"role": "system", "content": system.get("parts")})
    request: dict[str, object] = {"messages": messages}
    config = body.get("generationConfig")
    if isinstance(config, dict) and "maxOutputTokens" in config:
        request["max_tokens"] = config["maxOutputTokens"]
    return request


def render(
    outcome: Outcome, request: Mapping[str, object], model: str, response_id: str
) -> Rendered:
    """The HTTP status, JSON body and headers answering ``outcome``."""
    if isinstance(outcome, Answer):
        reply = outcome.reply
        candidate: JsonObject = {
            "content": {"role": "model", "parts": [{"text": reply.content}]},
            "finishReason": _FINISH_REASONS[reply.finish_reason],
            "index": 0,
        }
        usage = usage_metadata(reply.prompt_tokens, reply.completion_tokens)
        body: JsonObject = {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": response_id,
        }
        return 200, body, outcome.headers
    if outcome.code == "content_filter":
        messages = request.get("messages")
        prompt_tokens = estimate_prompt_tokens(messages if isinstance(messages, list) else [])
        blocked: JsonObject = {
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": usage_metadata(prompt_tokens, 0),
            "modelVersion": model,
            "responseId": response_id,
        }
        return 200, blocked, ()
    return outcome.status, error_body(outcome), ()


def render_stream(
    outcome: Outcome, request: Mapping[str, object], model: str, response_id: str
) -> Rendered | StreamPlan:
    """The events of a streamed answer (the first goes out alone), or the rendered
    error to answer instead of a stream."""
    if not isinstance(outcome, Answer):
        status, body, headers = render(outcome, request, model, response_id)
        return StreamPlan([body], 1) if status == 200 else (status, body, headers)
    reply = outcome.reply
    events: list[JsonObject] = []
    for n, word in enumerate(reply.words):
        candidate: JsonObject = {
            "content": {"role": "model", "parts": [{"text": word if n == 0 else f" {word}"}]},
            "index": 0,
        }
        if n == len(reply.words) - 1:
            candidate["finishReason"] = _FINISH_REASONS[reply.finish_reason]
        events.append(
            {
                "candidates": [candidate],
                "usageMetadata": usage_metadata(reply.prompt_tokens, n + 1),
                "modelVersion": model,
                "responseId": response_id,
            }
        )
    return StreamPlan(events, 1)


def usage_metadata(prompt_tokens: int, candidates_tokens: int) -> JsonObject:
    """``usageMetadata`` in tokens (no thoughts, no cached content in the mock)."""
    return {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": candidates_tokens,
        "totalTokenCount": prompt_tokens + candidates_tokens,
    }


def error_body(failure: Failure) -> JsonObject:
    """A google.rpc.Status: ``{"error": {"code", "message", "status", "details"?}}``.

    A 429 carries its Retry-After as RetryInfo, where Gemini puts it.
    """
    message = failure.message
    if failure.code == "context_length_exceeded":
        message = (
            f"The input token count ({CONTEXT_WINDOW_TOKENS + 1}) exceeds the maximum "
            f"number of tokens allowed ({CONTEXT_WINDOW_TOKENS})."
        )
    default = "INTERNAL" if failure.status >= 500 else "INVALID_ARGUMENT"
    error: JsonObject = {
        "code": failure.status,
        "message": message,
        "status": STATUS_NAMES.get(failure.status, default),
    }
    retry_after = dict(failure.headers).get("Retry-After")
    if retry_after is not None:
        error["details"] = [{"@type": RETRY_INFO_TYPE, "retryDelay": f"{retry_after}s"}]
    return {"error": error}
