"""OpenAI Chat Completions wire format for the mock provider's outcomes: pure renderers.

Input: ``Reply``/``Failure`` values from ``behaviour``, the response id and the creation
time in seconds (passed in, never read here). Output: plain dicts ready for JSON
encoding, shaped as OpenAI's ``chat.completion``, ``chat.completion.chunk``, error and
model-list objects. Guarantee: the concatenated chunk deltas of a stream equal the
non-streamed ``message.content`` of the same reply.
"""

from __future__ import annotations

from typing import Final

from workers.providers.mock.behaviour import Failure, Reply

MODEL_OWNER: Final = "tollway-mock"
LISTED_MODELS: Final = (
    "mock",
    "mock-slow-1000",
    "mock-error-500",
    "mock-error-400",
    "mock-429-1",
    "mock-flaky-50",
    "mock-timeout",
    "mock-context-window",
    "mock-content-filter",
)
"""Examples shown by ``GET /v1/models``; any other name is served as well."""

JsonObject = dict[str, object]


def usage(reply: Reply) -> JsonObject:
    """The ``usage`` object, in tokens."""
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


def completion_body(reply: Reply, model: str, response_id: str, created_s: int) -> JsonObject:
    """A ``chat.completion`` object; ``created_s`` is Unix time in seconds."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created_s,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": _message(reply),
                "logprobs": None,
                "finish_reason": "tool_calls" if reply.tool_call else reply.finish_reason,
            }
        ],
        "usage": usage(reply),
        "system_fingerprint": None,
    }


def _message(reply: Reply) -> JsonObject:
    call = reply.tool_call
    if call is None:
        return {"role": "assistant", "content": reply.content, "refusal": None}
    function = {"name": call.name, "arguments": call.arguments}
    return {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [{"id": call.call_id, "type": "function", "function": function}],
    }


def stream_chunks(
    reply: Reply, model: str, response_id: str, created_s: int, include_usage: bool
) -> list[JsonObject]:
    """The ``chat.completion.chunk`` objects of a streamed reply, in order.

    A role chunk, one content delta per word (a leading space on all but the first),
    a final empty delta carrying ``finish_reason``, then - when ``include_usage`` - a
    chunk with empty ``choices`` and the ``usage``. As OpenAI does, every other chunk
    carries ``"usage": null`` when usage is requested. ``[DONE]`` is the transport's job.
    """

    def chunk(delta: JsonObject, finish_reason: str | None) -> JsonObject:
        body: JsonObject = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created_s,
            "model": model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            body["usage"] = None
        return body

    chunks = [chunk({"role": "assistant", "content": ""}, None)]
    call = reply.tool_call
    if call is not None:  # the name first, then the arguments (OpenAI splits them further)
        head = {"index": 0, "id": call.call_id, "type": "function"}
        chunks.append(
            chunk(
                {"tool_calls": [{**head, "function": {"name": call.name, "arguments": ""}}]}, None
            )
        )
        chunks.append(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": call.arguments}}]}, None)
        )
        chunks.append(chunk({}, "tool_calls"))
    else:
        chunks.extend(
            chunk({"content": word if position == 0 else f" {word}"}, None)
            for position, word in enumerate(reply.words)
        )
        chunks.append(chunk({}, reply.finish_reason))
    if include_usage:
        chunks.append(
            {
                "id": response_id,
                "object": "chat.completion.chunk",
                "created": created_s,
                "model": model,
                "system_fingerprint": None,
                "choices": [],
                "usage": usage(reply),
            }
        )
    return chunks


def error_body(failure: Failure) -> JsonObject:
    """The OpenAI error object ``{"error": {"message", "type", "param", "code"}}``."""
    return {
        "error": {
            "message": failure.message,
            "type": failure.type,
            "param": failure.param,
            "code": failure.code,
        }
    }


def models_body(created_s: int = 0) -> JsonObject:
    """The ``GET /v1/models`` list object."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created_s, "owned_by": MODEL_OWNER}
            for name in LISTED_MODELS
        ],
    }
