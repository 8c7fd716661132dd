"""Google Gemini adapter: canonical chat request -> generateContent -> canonical.

POST {base_url}/v1beta/models/{model}:generateContent with `x-goog-api-key`. Field
names follow the official `google-genai` SDK's Gemini Developer API converters
(camelCase on the wire: GenerateContentResponse, UsageMetadata, FinishReason).

Request translation:
    system / developer messages   -> systemInstruction.parts
    user / assistant              -> contents with role user / model; consecutive
                                     contents of one role merged (Gemini wants a
                                     function-call turn answered by one turn)
    image_url parts               -> inlineData for data: URLs, fileData (mime type
                                     guessed from the extension) for other URLs
    assistant tool_calls          -> functionCall parts (args parsed)
    tool messages                 -> functionResponse parts {"output": text}, named
                                     after the call they answer
    tools / tool_choice           -> functionDeclarations (parametersJsonSchema: the
                                     OpenAI parameters are JSON Schema);
                                     functionCallingConfig AUTO / NONE / ANY (+ name)
    generationConfig              <- temperature, top_p, max(_completion)_tokens, stop,
                                     n (candidateCount), seed; response_format json
                                     -> responseMimeType application/json (+ schema)
Refused with 400 `unsupported_parameter`: logprobs, audio output, non-text
non-image parts, image URLs without a known image extension (fileData needs a
mime type), non-function tools. Ignored: penalties (several Gemini models reject
them), logit_bias, parallel_tool_calls, reasoning_effort, user, service_tier.
Whether Gemini fetches an http(s) fileUri depends on the model; a refusal comes
back as its own 400.

Tool-call ids: Gemini matches function responses by name, so ids never go back
upstream. A call's `thoughtSignature` (Gemini 3 rejects a replayed function call
without it) rides inside the OpenAI tool-call id after THOUGHT_SIGNATURE_SEPARATOR
and is restored when the client sends the assistant turn back.

Answer translation: one choice per candidate; thought parts dropped; finishReason
STOP -> stop (tool_calls when the candidate called functions), MAX_TOKENS ->
length, safety/recitation/blocklist reasons -> content_filter. A prompt blocked
outright (promptFeedback.blockReason, no candidates) is ProviderBadRequest
`content_filter`. Usage: prompt = promptTokenCount (cached content included) +
toolUsePromptTokenCount; completion = candidatesTokenCount + thoughtsTokenCount;
cached = cachedContentTokenCount; reasoning = thoughtsTokenCount.

Errors (google.rpc.Status bodies): `status` becomes the code; 429 honours
RetryInfo.retryDelay; a 400 with ErrorInfo reason API_KEY_INVALID or status
FAILED_PRECONDITION (region, billing) is this deployment's fault: ProviderError, so
the plan fails over. Gemini names an over-long prompt only in its message:
`is_context_window_message` reads it and gives code `context_length_exceeded`.

Streaming (`chat_stream`): the same body to :streamGenerateContent?alt=sse; each
server-sent event (a partial GenerateContentResponse) is translated as it arrives by
`gemini_stream.py`, which also holds the part, finish-reason and usage rules this
module applies to whole answers. Errors before the first event are raised as above.
"""

from __future__ import annotations

import mimetypes
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final

import orjson

from schemas.errors import ProviderBadRequest, ProviderError, ProviderServerError
from schemas.records import Usage
from schemas.routes import Deployment
from workers.providers import canonical
from workers.providers.base import ProviderReply, StreamPiece
from workers.providers.canonical import JsonObject, unsupported
from workers.providers.event_stream import stream_chat_translated
from workers.providers.gemini_stream import (
    FINISH_REASONS,
    THOUGHT_SIGNATURE_SEPARATOR,
    GeminiStreamTranslator,
    candidate_index,
    candidate_output,
    finish_reason,
    usage_from_gemini,
)
from workers.providers.http import HttpClient
from workers.providers.transport import api_key, error_for_status, json_object, post_json

__all__ = [
    "CONTEXT_LENGTH_EXCEEDED",
    "FINISH_REASONS",
    "STREAM_PARAMS",
    "THOUGHT_SIGNATURE_SEPARATOR",
    "GeminiProvider",
    "error_from_response",
    "from_generate_content",
    "is_context_window_message",
    "to_generate_content_request",
    "usage_from_gemini",
]

Target = tuple[str, str, dict[str, str]]
STREAM_PARAMS: Final = {"alt": "sse"}
"""streamGenerateContent answers server-sent events with these (a JSON array without)."""
CONTEXT_LENGTH_EXCEEDED: Final = "context_length_exceeded"
CONTEXT_WINDOW_MESSAGE_MARK: Final = "exceeds the maximum number of tokens allowed"
MISCONFIGURED_REASONS: Final = frozenset({"API_KEY_INVALID"})
MISCONFIGURED_STATUSES: Final = frozenset({"FAILED_PRECONDITION"})
RETRY_INFO_TYPE: Final = "type.googleapis.com/google.rpc.RetryInfo"
ERROR_INFO_TYPE: Final = "type.googleapis.com/google.rpc.ErrorInfo"
_PROVIDER: Final = "Gemini generateContent"
_ROLES: Final = {"user": "user", "assistant": "model", "tool": "user"}


# --- request ---------------------------------------------------------------------------


def to_generate_content_request(request: Mapping[str, Any]) -> JsonObject:
    """The generateContent body for a canonical chat request (the model is in the URL)."""
    if request.get("logprobs"):
        raise unsupported(_PROVIDER, "logprobs", "logprobs")
    if request.get("audio") is not None or "audio" in (request.get("modalities") or ()):
        raise unsupported(_PROVIDER, "audio output", "modalities")
    system, contents = _system_and_contents(request["messages"])
    body: JsonObject = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if config := _generation_config(request):
        body["generationConfig"] = config
    _add_tools(body, request)
    return body


def _system_and_contents(messages: list[Any]) -> tuple[list[JsonObject], list[JsonObject]]:
    """System instruction parts, and the conversation as contents."""
    system: list[JsonObject] = []
    contents: list[JsonObject] = []
    call_names: dict[str, str] = {}
    for index, message in enumerate(messages):
        role = message.get("role")
        param = f"messages[{index}]"
        if role in ("system", "developer"):
            if text := canonical.text_of(message.get("content")):
                system.append({"text": text})
            continue
        if role == "user":
            parts = _user_parts(message.get("content"), param)
        elif role == "assistant":
            parts = _model_parts(message, param, call_names)
        elif role == "tool":
            parts = [_function_response(message, param, call_names)]
        else:
            raise unsupported(_PROVIDER, f"messages with role {role!r}", param)
        if not parts:
            continue
        if contents and contents[-1]["role"] == _ROLES[role]:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": _ROLES[role], "parts": parts})
    return system, contents


def _user_parts(content: Any, param: str) -> list[JsonObject]:
    parts: list[JsonObject] = []
    for part in canonical.content_parts(content):
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_image_part(part, f"{param}.content"))
        else:
            raise unsupported(_PROVIDER, f"content parts of type {kind!r}", f"{param}.content")
    return parts


def _image_part(part: Mapping[str, Any], param: str) -> JsonObject:
    url = canonical.image_url(part, param)
    inline = canonical.parse_data_url(url, param)
    if inline is not None:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    mime_type, _ = mimetypes.guess_type(urllib.parse.urlsplit(url).path)
    if mime_type is None:
        raise unsupported(_PROVIDER, "an image URL without a known file extension", param)
    return {"fileData": {"mimeType": mime_type, "fileUri": url}}


def _model_parts(
    message: Mapping[str, Any], param: str, call_names: dict[str, str]
) -> list[JsonObject]:
    parts: list[JsonObject] = []
    if text := canonical.text_of(message.get("content")):
        parts.append({"text": text})
    for number, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        name = str(function.get("name"))
        call_id = str(call.get("id"))
        call_names[call_id] = name
        args = canonical.tool_arguments(function.get("arguments"), f"{param}.tool_calls[{number}]")
        part: JsonObject = {"functionCall": {"name": name, "args": args}}
        _, sep, signature = call_id.partition(THOUGHT_SIGNATURE_SEPARATOR)
        if sep:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _function_response(
    message: Mapping[str, Any], param: str, call_names: Mapping[str, str]
) -> JsonObject:
    name = call_names.get(str(message.get("tool_call_id"))) or message.get("name")
    if not isinstance(name, str) or not name:
        raise unsupported(_PROVIDER, "a tool message that answers no earlier tool call", param)
    output = canonical.text_of(message.get("content"))
    return {"functionResponse": {"name": name, "response": {"output": output}}}


def _generation_config(request: Mapping[str, Any]) -> JsonObject:
    config: JsonObject = {}
    for source, target in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed")):
        if request.get(source) is not None:
            config[target] = request[source]
    if (limit := canonical.max_output_tokens(request)) is not None:
        config["maxOutputTokens"] = limit
    if stop := canonical.stop_sequences(request):
        config["stopSequences"] = stop
    if (request.get("n") or 1) > 1:
        config["candidateCount"] = request["n"]
    if (mode := canonical.json_mode(request)) is not None:
        config["responseMimeType"] = "application/json"
        if mode[1] is not None:
            config["responseJsonSchema"] = mode[1]
    return config


def _add_tools(body: JsonObject, request: Mapping[str, Any]) -> None:
    declarations: list[JsonObject] = []
    for function in canonical.functions(request, _PROVIDER):
        declaration: JsonObject = {"name": function.get("name")}
        if function.get("description"):
            declaration["description"] = function["description"]
        if function.get("parameters"):
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    if not declarations:
        return
    body["tools"] = [{"functionDeclarations": declarations}]
    choice = canonical.tool_choice(request)
    if choice is None:
        return
    mode, name = choice
    config: JsonObject = {"mode": {"auto": "AUTO", "none": "NONE"}.get(mode, "ANY")}
    if name is not None:
        config["allowedFunctionNames"] = [name]
    body["toolConfig"] = {"functionCallingConfig": config}


# --- answer ----------------------------------------------------------------------------


def from_generate_content(
    answer: Mapping[str, Any], created_s: int, requested_model: str
) -> tuple[bytes, Usage, str]:
    """(chat.completion body, usage, served model) from a GenerateContentResponse.

    Raises ProviderBadRequest `content_filter` for a blocked prompt, and
    ValueError/TypeError/KeyError when the answer is not a GenerateContentResponse.
    """
    candidates = answer.get("candidates") or []
    if not candidates:
        if (answer.get("promptFeedback") or {}).get("blockReason"):
            raise ProviderBadRequest("the prompt was blocked", upstream_code="content_filter")
        raise ValueError("no candidates")
    response_id = str(answer.get("responseId") or "")
    choices = [
        _choice(candidate, position, response_id) for position, candidate in enumerate(candidates)
    ]
    usage = usage_from_gemini(answer.get("usageMetadata"))
    model = str(answer.get("modelVersion") or requested_model)
    body = canonical.completion_body(
        response_id=response_id, created_s=created_s, model=model, choices=choices, usage=usage
    )
    return body, usage, model


def _choice(candidate: Mapping[str, Any], position: int, response_id: str) -> JsonObject:
    index = candidate_index(candidate, position)
    texts, calls = candidate_output(candidate, index, response_id, 0)
    # An unary answer always finishes: no (or an unspecified) reason reads as a stop.
    reason = finish_reason(candidate.get("finishReason"), bool(calls))
    reason = reason or ("tool_calls" if calls else "stop")
    return canonical.choice(index, "".join(texts) if texts else None, calls, reason)


def is_context_window_message(message: Any) -> bool:
    """Whether an INVALID_ARGUMENT message says the prompt exceeds the context window:
    Gemini gives no structured reason for it (see the module docstring)."""
    return isinstance(message, str) and CONTEXT_WINDOW_MESSAGE_MARK in message.lower()


def error_from_response(
    deployment: Deployment, status: int, headers: Mapping[str, str], content: bytes
) -> ProviderError:
    """The `ProviderError` for a non-2xx generateContent answer."""
    error = _status_object(content)
    code = error.get("status") if isinstance(error.get("status"), str) else None
    details = [d for d in error.get("details") or () if isinstance(d, dict)]
    reasons = {str(d.get("reason")) for d in details if d.get("@type") == ERROR_INFO_TYPE}
    if status == 400 and (reasons & MISCONFIGURED_REASONS or code in MISCONFIGURED_STATUSES):
        return ProviderError(
            f"{deployment.name}: upstream answered {status}",
            upstream_status=status,
            upstream_code=min(reasons & MISCONFIGURED_REASONS, default=code),
        )
    if status == 400 and is_context_window_message(error.get("message")):
        code = CONTEXT_LENGTH_EXCEEDED
    retry_after_s = next(
        (_duration_s(d.get("retryDelay")) for d in details if d.get("@type") == RETRY_INFO_TYPE),
        None,
    )
    return error_for_status(deployment, status, headers, code, retry_after_s=retry_after_s)


def _status_object(content: bytes) -> JsonObject:
    """The google.rpc.Status of an error body ({"error": ...}, sometimes in a 1-list)."""
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def _duration_s(value: Any) -> float | None:
    """A protobuf JSON Duration ("37s", "0.5s") in seconds."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        return max(0.0, float(value[:-1]))
    except ValueError:
        return None


# --- the adapter -----------------------------------------------------------------------


class GeminiProvider:
    """`ChatProvider` for Gemini generateContent over the caller's pooled client."""

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

    def _target(self, deployment: Deployment, request: Mapping[str, Any], method: str) -> Target:
        """(upstream model, URL, headers) of a call to `method` of the deployment's model."""
        upstream_model = str(deployment.model or request["model"]).removeprefix("models/")
        # Quoted whole: a client-chosen model name must not reach another path or host.
        path = f"/v1beta/models/{urllib.parse.quote(upstream_model, safe='')}:{method}"
        key = api_key(deployment, self._environ)
        headers = {"x-goog-api-key": key} if key else {}
        return upstream_model, deployment.base_url.rstrip("/") + path, headers

    async def chat(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        upstream_model, url, headers = self._target(deployment, request, "generateContent")
        response = await post_json(
            self._client,
            deployment,
            url,
            headers=headers,
            payload=to_generate_content_request(request),
        )
        if response.status_code >= 300:
            raise error_from_response(
                deployment, response.status_code, response.headers, response.content
            )
        answer = json_object(deployment, response.content)
        try:
            body, usage, model = from_generate_content(answer, int(self._clock_s()), upstream_model)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProviderServerError(f"{deployment.name}: answer is not usable") from exc
        return ProviderReply(body=body, usage=usage, served_model=model)

    async def chat_stream(
        self, deployment: Deployment, request: dict[str, Any]
    ) -> AsyncIterator[StreamPiece]:
        """Stream with streamGenerateContent?alt=sse, each event translated as it
        arrives (gemini_stream.py); errors before the first piece allow fallback."""
        payload = to_generate_content_request(request)
        upstream_model, url, headers = self._target(deployment, request, "streamGenerateContent")
        async for piece in stream_chat_translated(
            self._client,
            deployment,
            request,
            translator_type=GeminiStreamTranslator,
            upstream_model=upstream_model,
            created_s=int(self._clock_s()),
            url=url,
            headers=headers,
            payload=payload,
            params=STREAM_PARAMS,
            error_from_response=error_from_response,
        ):
            yield piece

    async def aclose(self) -> None:
        """The client belongs to the caller (the registry), which closes it."""
