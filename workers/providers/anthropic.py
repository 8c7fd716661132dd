"""Anthropic Messages API adapter: canonical chat request -> POST /v1/messages -> canonical.

Field names follow the official `anthropic` SDK's types (MessageCreateParams,
Message, Usage, ErrorResponse). Headers: `x-api-key`, `anthropic-version: 2023-06-01`.

Request translation:
    system / developer messages     -> top-level `system` text blocks, in order (a
                                       mid-conversation system message moves to the top)
    user / assistant                -> turns of content blocks; consecutive turns of
                                       one role are merged, empty ones dropped
    image_url parts                 -> `image` blocks: data: URLs as a base64 source,
                                       other URLs as a `url` source
    assistant tool_calls            -> `tool_use` blocks (arguments parsed to `input`)
    tool messages                   -> `tool_result` blocks in a user turn
    tools / tool_choice             -> tools with `input_schema`; auto/none/required
                                       (-> any)/function (-> tool); parallel_tool_calls
                                       false -> disable_parallel_tool_use
    max_completion_tokens/max_tokens-> max_tokens (required by Anthropic: default
                                       DEFAULT_MAX_OUTPUT_TOKENS)
    stop, temperature, top_p, user  -> stop_sequences, temperature (clamped to
                                       Anthropic's 0-1), top_p, metadata.user_id
    response_format                 -> best effort: json_schema -> output_config.format
                                       (structured outputs; models without them answer
                                       400); json_object -> a system instruction, as
                                       Anthropic has no JSON mode
Refused with 400 `unsupported_parameter`: n > 1, logprobs, audio output, non-text
non-image parts, non-function tools. Ignored (no equivalent): penalties, seed,
logit_bias, reasoning_effort, service_tier and the other OpenAI-only knobs.
`tool.strict` is not forwarded (only some Claude models accept it).

Answer translation: text blocks joined -> content; tool_use -> tool_calls; thinking
blocks dropped (OpenAI has no field for them); stop_reason end_turn/stop_sequence ->
stop, max_tokens/model_context_window_exceeded -> length, tool_use -> tool_calls,
refusal -> content_filter. Usage: prompt_tokens = input + cache read + cache
creation tokens; cached = cache read; cache_write = cache creation; reasoning =
output_tokens_details.thinking_tokens (already inside output_tokens).

Streaming (`chat_stream`): the same body with `stream: true`; each server-sent event
is translated as it arrives by `anthropic_stream.py` (events -> chat.completion.chunk
pieces, usage at message_stop) over the shared HTTP loop in `event_stream.py`. A
non-2xx answer raises the errors below before any piece, so the plan can fail over.

Errors (`transport.py` maps statuses): the upstream `error.type` becomes the code;
429 keeps Retry-After; 529 overloaded is a retriable ProviderServerError. A prompt
that does not fit the context window is a 400 `invalid_request_error` that
Anthropic distinguishes only by its message, so `is_context_window_message` is the
one place that reads upstream text; it yields code `context_length_exceeded`.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

from schemas.errors import ProviderError, ProviderServerError
from schemas.records import Usage
from schemas.routes import Deployment
from workers.providers import canonical
from workers.providers.anthropic_stream import (
    FINISH_REASONS,
    AnthropicStreamTranslator,
    usage_from_anthropic,
)
from workers.providers.base import ProviderReply, StreamPiece
from workers.providers.canonical import JsonObject, unsupported
from workers.providers.event_stream import stream_chat_translated
from workers.providers.http import HttpClient
from workers.providers.transport import (
    api_key,
    error_for_status,
    error_object,
    json_object,
    post_json,
)

__all__ = [
    "ANTHROPIC_VERSION",
    "CONTEXT_LENGTH_EXCEEDED",
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "FINISH_REASONS",
    "JSON_OBJECT_INSTRUCTION",
    "MAX_TEMPERATURE",
    "AnthropicProvider",
    "error_from_response",
    "from_message",
    "is_context_window_message",
    "to_messages_request",
    "usage_from_anthropic",
]

ANTHROPIC_VERSION: Final = "2023-06-01"
DEFAULT_MAX_OUTPUT_TOKENS: Final = 4_096
"""`max_tokens` sent when the client set none: Anthropic requires one."""
MAX_TEMPERATURE: Final = 1.0
"""Anthropic's temperature range is 0-1 (OpenAI's is 0-2): higher values are clamped."""
JSON_OBJECT_INSTRUCTION: Final = (
    "Answer with a single valid JSON object and nothing else: no prose, no code fences."
)
CONTEXT_LENGTH_EXCEEDED: Final = "context_length_exceeded"
CONTEXT_WINDOW_MESSAGE_PREFIXES: Final = (
    "prompt is too long",
    "input length and `max_tokens` exceed context limit",
)
_PROVIDER: Final = "Anthropic Messages"


# --- request ---------------------------------------------------------------------------


def to_messages_request(request: Mapping[str, Any], model: str) -> JsonObject:
    """The Messages API body for a canonical chat request."""
    _refuse_unsupported(request)
    system, turns = _system_and_turns(request["messages"])
    body: JsonObject = {
        "model": model,
        "max_tokens": canonical.max_output_tokens(request) or DEFAULT_MAX_OUTPUT_TOKENS,
        "messages": turns,
    }
    mode = canonical.json_mode(request)
    if mode is not None and mode[0] == "json_schema" and mode[1] is not None:
        body["output_config"] = {"format": {"type": "json_schema", "schema": mode[1]}}
    elif mode is not None:
        system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
    if system:
        body["system"] = system
    if stop := canonical.stop_sequences(request):
        body["stop_sequences"] = stop
    if (temperature := request.get("temperature")) is not None:
        body["temperature"] = min(float(temperature), MAX_TEMPERATURE)
    if (top_p := request.get("top_p")) is not None:
        body["top_p"] = top_p
    if isinstance(user := request.get("user"), str):
        body["metadata"] = {"user_id": user}
    _add_tools(body, request)
    return body


def _system_and_turns(messages: list[Any]) -> tuple[list[JsonObject], list[JsonObject]]:
    """System text blocks, and the conversation as turns of content blocks."""
    system: list[JsonObject] = []
    turns: list[JsonObject] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        param = f"messages[{index}]"
        if role in ("system", "developer"):
            if text := canonical.text_of(message.get("content")):
                system.append({"type": "text", "text": text})
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), param)
        elif role == "assistant":
            blocks = _assistant_blocks(message, param)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message, param)]
        else:
            raise unsupported(_PROVIDER, f"messages with role {role!r}", param)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return system, turns


def _refuse_unsupported(request: Mapping[str, Any]) -> None:
    if (request.get("n") or 1) > 1:
        raise unsupported(_PROVIDER, "n > 1", "n")
    if request.get("logprobs"):
        raise unsupported(_PROVIDER, "logprobs", "logprobs")
    if request.get("audio") is not None or "audio" in (request.get("modalities") or ()):
        raise unsupported(_PROVIDER, "audio output", "modalities")


def _user_blocks(content: Any, param: str) -> list[JsonObject]:
    blocks: list[JsonObject] = []
    for part in canonical.content_parts(content):
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = canonical.image_url(part, f"{param}.content")
            inline = canonical.parse_data_url(url, f"{param}.content")
            source = (
                {"type": "base64", "media_type": inline[0], "data": inline[1]}
                if inline
                else {"type": "url", "url": url}
            )
            blocks.append({"type": "image", "source": source})
        else:
            raise unsupported(_PROVIDER, f"content parts of type {kind!r}", f"{param}.content")
    return blocks


def _assistant_blocks(message: Mapping[str, Any], param: str) -> list[JsonObject]:
    blocks: list[JsonObject] = []
    if text := canonical.text_of(message.get("content")):
        blocks.append({"type": "text", "text": text})
    for number, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": canonical.tool_arguments(
                    function.get("arguments"), f"{param}.tool_calls[{number}]"
                ),
            }
        )
    return blocks


def _tool_result(message: Mapping[str, Any], param: str) -> JsonObject:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise unsupported(_PROVIDER, "a tool message without tool_call_id", param)
    return {
        "type": "tool_result",
        "tool_use_id": call_id,
        "content": canonical.text_of(message.get("content")),
    }


def _add_tools(body: JsonObject, request: Mapping[str, Any]) -> None:
    functions = canonical.functions(request, _PROVIDER)
    if not functions:
        return  # Anthropic rejects a tool_choice without tools
    tools: list[JsonObject] = []
    for function in functions:
        tool: JsonObject = {
            "name": function.get("name"),
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            tool["description"] = function["description"]
        tools.append(tool)
    body["tools"] = tools
    choice: JsonObject | None = None
    match canonical.tool_choice(request):
        case ("auto", _):
            choice = {"type": "auto"}
        case ("none", _):
            choice = {"type": "none"}
        case ("required", _):
            choice = {"type": "any"}
        case ("function", name):
            choice = {"type": "tool", "name": name}
    if request.get("parallel_tool_calls") is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        body["tool_choice"] = choice


# --- answer ----------------------------------------------------------------------------


def from_message(
    message: Mapping[str, Any], created_s: int, requested_model: str
) -> tuple[bytes, Usage, str]:
    """(chat.completion body, usage, served model) from a Messages API `message`.

    Raises ValueError/TypeError/KeyError when the answer is not a message.
    """
    if message.get("type") != "message" or not isinstance(message.get("content"), list):
        raise ValueError("not a Messages API message")
    texts: list[str] = []
    calls: list[JsonObject] = []
    for block in message["content"]:
        if block.get("type") == "text":
            texts.append(str(block["text"]))
        elif block.get("type") == "tool_use":
            calls.append(canonical.tool_call(str(block["id"]), str(block["name"]), block["input"]))
    usage = usage_from_anthropic(message.get("usage"))
    model = str(message.get("model") or requested_model)
    finish_reason = FINISH_REASONS.get(str(message.get("stop_reason")), "stop")
    body = canonical.completion_body(
        response_id=str(message.get("id") or ""),
        created_s=created_s,
        model=model,
        choices=[canonical.choice(0, "".join(texts) if texts else None, calls, finish_reason)],
        usage=usage,
    )
    return body, usage, model


def is_context_window_message(message: Any) -> bool:
    """Whether an `invalid_request_error` message says the prompt exceeds the context
    window: Anthropic gives no structured code for it (see the module docstring)."""
    return isinstance(message, str) and message.lower().startswith(CONTEXT_WINDOW_MESSAGE_PREFIXES)


def error_from_response(
    deployment: Deployment, status: int, headers: Mapping[str, str], content: bytes
) -> ProviderError:
    """The `ProviderError` for a non-2xx Messages API answer."""
    error = error_object(content)
    code = error.get("type") if isinstance(error.get("type"), str) else None
    if status == 400 and is_context_window_message(error.get("message")):
        code = CONTEXT_LENGTH_EXCEEDED
    return error_for_status(deployment, status, headers, code)


# --- the adapter -----------------------------------------------------------------------


class AnthropicProvider:
    """`ChatProvider` for the Anthropic Messages API over the caller's pooled client."""

    def __init__(
        self,
        *,
        client: HttpClient,
        environ: Mapping[str, str] = os.environ,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._environ = environ
        self._clock_s = clock_s

    def _url_and_headers(self, deployment: Deployment) -> tuple[str, dict[str, str]]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if key := api_key(deployment, self._environ):
            headers["x-api-key"] = key
        return deployment.base_url.rstrip("/") + "/v1/messages", headers

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        upstream_model = deployment.model or request["model"]
        payload = to_messages_request(request, upstream_model)
        url, headers = self._url_and_headers(deployment)
        response = await post_json(self._client, deployment, url, headers=headers, payload=payload)
        if response.status_code >= 300:
            raise error_from_response(
                deployment, response.status_code, response.headers, response.content
            )
        message = json_object(deployment, response.content)
        try:
            body, usage, model = from_message(message, int(self._clock_s()), upstream_model)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderServerError(f"{deployment.name}: answer is not a usable message") from exc
        return ProviderReply(body=body, usage=usage, served_model=model)

    async def chat_stream(
        self, deployment: Deployment, request: dict[str, Any]
    ) -> AsyncIterator[StreamPiece]:
        """Stream with `stream: true`, each event translated as it arrives
        (anthropic_stream.py); errors before the first piece allow fallback."""
        upstream_model = str(deployment.model or request["model"])
        payload = {**to_messages_request(request, upstream_model), "stream": True}
        url, headers = self._url_and_headers(deployment)
        async for piece in stream_chat_translated(
            self._client,
            deployment,
            request,
            translator_type=AnthropicStreamTranslator,
            upstream_model=upstream_model,
            created_s=int(self._clock_s()),
            url=url,
            headers=headers,
            payload=payload,
            error_from_response=error_from_response,
        ):
            yield piece

    async def aclose(self) -> None:
        """The client belongs to the caller (the registry), which closes it."""
