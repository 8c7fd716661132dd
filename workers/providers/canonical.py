"""The canonical OpenAI Chat Completions shapes, as translating adapters read and write them.

Pure: no I/O, no clock (`created_s` is an argument). Input: the canonical request
dict as the ingress validated it (`schemas/openai.py`; an explicit JSON null counts
as absent). Output: the pieces of an OpenAI `chat.completion` body and its `usage`.
The Anthropic and Gemini adapters build on these so both answer in one shape.

A request that a provider cannot express (audio input, `n` > 1 on Anthropic...)
raises `ProviderBadRequest` with code `unsupported_parameter`: the request is
refused with a clear 400 rather than silently answered without the feature.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

import orjson

from schemas.errors import ProviderBadRequest
from schemas.records import Usage

JsonObject = dict[str, Any]

UNSUPPORTED: Final = "unsupported_parameter"
INVALID_TOOL_ARGUMENTS: Final = "invalid_tool_arguments"

ToolChoice = tuple[Literal["auto", "none", "required", "function"], str | None]
JsonMode = tuple[Literal["json_object", "json_schema"], JsonObject | None]


def unsupported(provider: str, what: str, param: str) -> ProviderBadRequest:
    """The error for a request feature `provider` has no equivalent for."""
    return ProviderBadRequest(
        f"the {provider} API cannot take {what}", upstream_code=UNSUPPORTED, param=param
    )


# --- reading the request -------------------------------------------------------------


def max_output_tokens(request: Mapping[str, Any]) -> int | None:
    """The completion cap: the smaller of `max_completion_tokens` and `max_tokens`."""
    limits = [
        value
        for value in (request.get("max_completion_tokens"), request.get("max_tokens"))
        if value is not None
    ]
    return min(limits) if limits else None


def stop_sequences(request: Mapping[str, Any]) -> list[str]:
    """`stop` as a list (OpenAI accepts one string or up to four)."""
    stop = request.get("stop")
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else [str(s) for s in stop]


def text_of(content: Any) -> str:
    """A message's text: its string content, or its `text` parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def content_parts(content: Any) -> Iterator[JsonObject]:
    """A message's content as parts: a string is one `text` part; null is none."""
    if isinstance(content, str):
        if content:
            yield {"type": "text", "text": content}
    elif isinstance(content, list):
        yield from (part for part in content if isinstance(part, dict))


def image_url(part: Mapping[str, Any], param: str) -> str:
    """The URL of an `image_url` part (an object with `url`, or a bare string)."""
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise ProviderBadRequest(
            "an image_url part needs a url", upstream_code=UNSUPPORTED, param=param
        )
    return url


def parse_data_url(url: str, param: str) -> tuple[str, str] | None:
    """`(media_type, base64_data)` of a `data:<type>;base64,<data>` URL; None otherwise."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if not sep or encoding.lower() != "base64" or not media_type or not data:
        raise ProviderBadRequest(
            "an image data: URL must be data:<media type>;base64,<data>",
            upstream_code=UNSUPPORTED,
            param=param,
        )
    # The base64 itself is not decoded here (megabytes of CPU on the hot path): the
    # provider rejects bad data with a 400 of its own.
    return media_type.lower(), data


def tool_arguments(raw: Any, param: str) -> JsonObject:
    """A tool call's `arguments` JSON string as an object ("" is {})."""
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    try:
        parsed = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise ProviderBadRequest(
            "tool call arguments must be a JSON object",
            upstream_code=INVALID_TOOL_ARGUMENTS,
            param=param,
        ) from exc
    if not isinstance(parsed, dict):
        raise ProviderBadRequest(
            "tool call arguments must be a JSON object",
            upstream_code=INVALID_TOOL_ARGUMENTS,
            param=param,
        )
    return parsed


def functions(request: Mapping[str, Any], provider: str) -> list[JsonObject]:
    """The `function` objects of `tools`; any other tool type is unsupported."""
    result: list[JsonObject] = []
    for index, tool in enumerate(request.get("tools") or ()):
        kind = tool.get("type", "function") if isinstance(tool, dict) else None
        function = tool.get("function") if isinstance(tool, dict) else None
        if kind != "function" or not isinstance(function, dict):
            raise unsupported(provider, f"tools of type {kind!r}", f"tools[{index}]")
        result.append(function)
    return result


def tool_choice(request: Mapping[str, Any]) -> ToolChoice | None:
    """`tool_choice` as (mode, function name); None when the client left it out."""
    choice = request.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return choice, None
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return "function", function["name"]
    raise ProviderBadRequest(
        "tool_choice must be auto, none, required or a function",
        upstream_code=UNSUPPORTED,
        param="tool_choice",
    )


def json_mode(request: Mapping[str, Any]) -> JsonMode | None:
    """`response_format` as (kind, JSON schema); None for plain text."""
    response_format = request.get("response_format")
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json_object", None
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return "json_schema", schema if isinstance(schema, dict) else None
    return None


# --- writing the answer --------------------------------------------------------------


def tool_call(call_id: str, name: str, arguments: Any) -> JsonObject:
    """One OpenAI `tool_calls` entry; `arguments` is serialised to its JSON string."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(arguments or {}).decode()},
    }


def choice(
    index: int, text: str | None, tool_calls: list[JsonObject], finish_reason: str
) -> JsonObject:
    """One `choices` entry; content is null when the model only called tools."""
    message: JsonObject = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def usage_object(usage: Usage) -> JsonObject:
    """The OpenAI `usage` object; cache writes have no OpenAI field (the record keeps them)."""
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"],
        "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"]},
        "completion_tokens_details": {"reasoning_tokens": usage["reasoning_tokens"]},
    }


def completion_body(
    *, response_id: str, created_s: int, model: str, choices: list[JsonObject], usage: Usage
) -> bytes:
    """A whole `chat.completion` body as JSON bytes; `created_s` is Unix seconds."""
    return orjson.dumps(
        {
            "id": response_id,
            "object": "chat.completion",
            "created": created_s,
            "model": model,
            "choices": choices,
            "usage": usage_object(usage),
            "system_fingerprint": None,
        }
    )


def completion_as_chunk(body: bytes) -> bytes:
    """A whole `chat.completion` body as one `chat.completion.chunk` (for a stream
    served by a provider that answers in one piece): each message becomes a delta."""
    completion = orjson.loads(body)
    choices = [
        {
            "index": c.get("index", 0),
            "delta": c.get("message") or {},
            "logprobs": c.get("logprobs"),
            "finish_reason": c.get("finish_reason"),
        }
        for c in completion.get("choices") or ()
    ]
    return orjson.dumps({**completion, "object": "chat.completion.chunk", "choices": choices})
