"""Gemini `streamGenerateContent?alt=sse` events -> canonical chat.completion.chunk pieces. Pure.

Input: the JSON `data` of each server-sent event, in order. Each is a whole
GenerateContentResponse (REST reference, models.streamGenerateContent: "a stream
of GenerateContentResponse instances") holding only what is new: candidates with
the parts generated since the last event, a finishReason on a candidate's last
event, usageMetadata (cumulative: the last one counts). There is no end sentinel:
the stream ends after the last event. Output: `StreamPiece`s written by
`ChunkWriter` (see chunks.py for the shape and the late role chunk).

    candidates[i].content.parts text         -> content delta of choice `index`
    candidates[i].content.parts functionCall -> one tool_calls delta with the whole
                                                call (Gemini streams calls whole):
                                                id (see `tool_call_id`), name, args
    parts with thought: true                 -> nothing (OpenAI has no field)
    candidates[i].finishReason               -> finish_reason (FINISH_REASONS; stop
                                                becomes tool_calls after a call)
    usageMetadata                            -> remembered; the usage chunk at `close`
    promptFeedback.blockReason, no candidates-> ProviderBadRequest content_filter
                                                (the prompt was blocked: Gemini sends
                                                it as the only event)
    {"error": google.rpc.Status}             -> ProviderRateLimited (429),
                                                ProviderTimeout (504), else a
                                                retriable ProviderServerError

A stream that ends without any finishReason (`close`) or sends an unreadable event
is a ProviderServerError; the router makes any error after the first relayed chunk
a `StreamBroken`. Usage follows `usage_from_gemini`.

The same part and finish-reason rules serve the unstreamed adapter (gemini.py), so
a streamed answer assembles to the body `generateContent` would have given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from schemas.errors import (
    ProviderBadRequest,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
)
from schemas.records import Usage
from workers.providers.base import StreamPiece
from workers.providers.canonical import JsonObject, tool_call
from workers.providers.chunks import ChunkWriter
from workers.providers.tokens import token_count as tokens

THOUGHT_SIGNATURE_SEPARATOR: Final = ".sig."
"""Never in a base64 signature nor in the ids this adapter makes."""
FINISH_REASONS: Final = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
}
UNSPECIFIED_FINISH: Final = "FINISH_REASON_UNSPECIFIED"


def usage_from_gemini(metadata: Any) -> Usage:
    """Canonical usage from `usageMetadata` (thoughts are apart from candidates there)."""
    if not isinstance(metadata, dict):
        metadata = {}
    thoughts = tokens(metadata.get("thoughtsTokenCount"))
    prompt = tokens(metadata.get("promptTokenCount"))
    return {
        "prompt_tokens": tokens(prompt + tokens(metadata.get("toolUsePromptTokenCount"))),
        "completion_tokens": tokens(tokens(metadata.get("candidatesTokenCount")) + thoughts),
        "cached_tokens": tokens(metadata.get("cachedContentTokenCount")),
        "reasoning_tokens": thoughts,
        "cache_write_tokens": 0,  # explicit caches are created (and billed) apart
    }


def tool_call_id(part: Mapping[str, Any], response_id: str, index: int, number: int) -> str:
    """The OpenAI id of a functionCall part: Gemini's own id, or one made from the
    response id, the candidate index and the call's number in it; any thoughtSignature
    rides after THOUGHT_SIGNATURE_SEPARATOR (gemini.py restores it on the way back)."""
    call = part["functionCall"]
    call_id = str(call.get("id") or f"call_{response_id}_{index}_{number}")
    if signature := part.get("thoughtSignature"):
        call_id = f"{call_id}{THOUGHT_SIGNATURE_SEPARATOR}{signature}"
    return call_id


def candidate_output(
    candidate: Mapping[str, Any], index: int, response_id: str, calls_before: int
) -> tuple[list[str], list[JsonObject]]:
    """A candidate's (texts, OpenAI tool calls) in part order; thought parts dropped.

    `calls_before` counts the calls this candidate made in earlier stream events, so
    made-up ids stay unique across events.
    """
    texts: list[str] = []
    calls: list[JsonObject] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(call := part.get("functionCall"), dict):
            call_id = tool_call_id(part, response_id, index, calls_before + len(calls))
            calls.append(tool_call(call_id, str(call["name"]), call.get("args")))
    return texts, calls


def candidate_index(candidate: Mapping[str, Any], position: int) -> int:
    """A candidate's `index`, or its position in `candidates` when absent (proto3 JSON
    omits an index of 0; some servers omit every index)."""
    index = candidate.get("index")
    return position if index is None else int(index)


def finish_reason(raw: Any, called_tools: bool) -> str | None:
    """The OpenAI finish_reason of a Gemini finishReason (None when absent)."""
    if raw is None or raw == UNSPECIFIED_FINISH:
        return None
    reason = FINISH_REASONS.get(str(raw), "stop")
    return "tool_calls" if called_tools and reason == "stop" else reason


def stream_error(source: str, error: Any) -> ProviderError:
    """The `ProviderError` for an `{"error": Status}` event inside a 200 stream."""
    status = error.get("code") if isinstance(error, dict) else None
    status = status if isinstance(status, int) else None
    name = error.get("status") if isinstance(error, dict) else None
    code = name if isinstance(name, str) else None
    message = f"{source}: the stream reported {code or 'an error'}"
    if status == 429:
        return ProviderRateLimited(message, upstream_code=code)
    if status == 504:
        return ProviderTimeout(message, upstream_status=status, upstream_code=code)
    # After the 200 the request was accepted: a failure now is the provider's.
    return ProviderServerError(message, upstream_status=status, upstream_code=code)


class GeminiStreamTranslator:
    """Translates one streamGenerateContent stream; `feed` each event's data, then `close`.

    `requested_model` names the model until an event reports modelVersion; `source`
    (the deployment name) prefixes error messages.
    """

    def __init__(
        self, *, source: str, requested_model: str, created_s: int, include_usage: bool
    ) -> None:
        self._source = source
        self._writer = ChunkWriter(
            response_id="", model=requested_model, created_s=created_s, include_usage=include_usage
        )
        self._usage_metadata: Any = None
        self._calls: dict[int, int] = {}
        self._finished: set[int] = set()

    def feed(self, event: Mapping[str, Any]) -> list[StreamPiece]:
        """The pieces one GenerateContentResponse produces, in order. Raises a `ProviderError`."""
        if "error" in event:
            raise stream_error(self._source, event["error"])
        try:
            return self._feed(event)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderServerError(f"{self._source}: unreadable stream event") from exc

    def close(self) -> list[StreamPiece]:
        """The usage chunk, once the stream ended; an unfinished stream is an error."""
        if not self._finished:
            raise ProviderServerError(f"{self._source}: the stream ended before a finishReason")
        return self._writer.usage(usage_from_gemini(self._usage_metadata))

    def _feed(self, event: Mapping[str, Any]) -> list[StreamPiece]:
        writer = self._writer
        writer.response_id = writer.response_id or str(event.get("responseId") or "")
        writer.model = str(event.get("modelVersion") or writer.model)
        if event.get("usageMetadata") is not None:
            usage_from_gemini(event["usageMetadata"])  # unusable counts fail here
            self._usage_metadata = event["usageMetadata"]
        candidates = event.get("candidates") or []
        if not candidates and (event.get("promptFeedback") or {}).get("blockReason"):
            raise ProviderBadRequest("the prompt was blocked", upstream_code="content_filter")
        pieces: list[StreamPiece] = []
        for position, candidate in enumerate(candidates):
            pieces.extend(self._candidate(candidate, candidate_index(candidate, position)))
        return pieces

    def _candidate(self, candidate: Mapping[str, Any], index: int) -> list[StreamPiece]:
        writer = self._writer
        calls_before = self._calls.get(index, 0)
        texts, calls = candidate_output(candidate, index, writer.response_id, calls_before)
        pieces = writer.content(index, "".join(texts))
        for number, call in enumerate(calls, start=calls_before):
            function = call["function"]
            pieces.extend(
                writer.tool_call_start(
                    index, number, call["id"], function["name"], function["arguments"]
                )
            )
        self._calls[index] = calls_before + len(calls)
        reason = finish_reason(candidate.get("finishReason"), self._calls[index] > 0)
        if reason is not None and index not in self._finished:
            self._finished.add(index)
            pieces.extend(writer.finish(index, reason))
        return pieces
