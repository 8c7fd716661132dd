"""The inbound Anthropic Messages request -> the canonical OpenAI chat request. Pure.

The inverse of `workers/providers/anthropic.py` (which speaks Anthropic to providers):
here Anthropic SDK clients speak to the gateway. Field names follow the official
`anthropic` SDK's types (MessageCreateParams and its block params); the answer side
(Message, stream events, errors) is `ingress/anthropic_answer.py`.

    system (string or text blocks)  -> a leading system message (text parts for blocks);
                                       `system`-role messages stay where they are
    text / image blocks             -> text / image_url parts (base64 as a data: URL)
    assistant tool_use blocks       -> tool_calls (input serialised to arguments)
    user tool_result blocks         -> `tool` messages ahead of the user's other content;
                                       images inside a result move to that user message
    thinking / redacted_thinking    -> dropped (no OpenAI field carries them back)
    max_tokens, stop_sequences      -> max_tokens, stop
    temperature, top_p              -> same names (Anthropic's 0-1 range fits OpenAI's)
    tools, tool_choice              -> function tools (`input_schema` -> parameters);
                                       auto/any(-> required)/tool(-> function)/none;
                                       disable_parallel_tool_use -> parallel_tool_calls false
    metadata.user_id                -> user
    output_config.format            -> response_format json_schema
    stream                          -> stream + stream_options.include_usage

Unknown fields are refused (400), as Anthropic does. Accepted and ignored, having no
OpenAI equivalent: top_k, thinking, output_config.effort, cache_control, service_tier,
inference_geo, speed, citations, tool_result.is_error.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import InvalidRequest, MalformedJSON
from schemas.openai import MAX_MESSAGES, MAX_TOKENS_LIMIT
from workers.providers import canonical
from workers.providers.canonical import JsonObject

MESSAGES_ENDPOINT: Final = "/v1/messages"


# --- the request, as Anthropic documents it --------------------------------------------


class _Documented(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CacheControl(_Documented):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlock(_Documented):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class Base64ImageSource(_Documented):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class URLImageSource(_Documented):
    type: Literal["url"]
    url: str


class ImageBlock(_Documented):
    type: Literal["image"]
    source: Annotated[Base64ImageSource | URLImageSource, Field(discriminator="type")]
    cache_control: CacheControl | None = None


class ToolUseBlock(_Documented):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class ToolResultBlock(_Documented):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(_Documented):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(_Documented):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class InputMessage(_Documented):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class Tool(_Documented):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    input_schema: dict[str, Any]
    description: str | None = None
    type: Literal["custom"] | None = None
    strict: bool | None = None
    cache_control: CacheControl | None = None


class ToolChoice(_Documented):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Documented):
    user_id: str | None = None


class JSONOutputFormat(_Documented):
    type: Literal["json_schema"]
    json_schema: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Documented):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JSONOutputFormat | None = None


class MessagesRequest(_Documented):
    """POST /v1/messages body."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT)]
    messages: Annotated[list[InputMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float | None, Field(ge=0, le=1)] = None
    top_p: Annotated[float | None, Field(ge=0, le=1)] = None
    top_k: Annotated[int | None, Field(ge=0)] = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    stream: bool | None = None
    thinking: dict[str, Any] | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    cache_control: CacheControl | None = None
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = None


def parse_messages_request(body: bytes) -> MessagesRequest:
    """Validate a Messages API body; `InvalidRequest` names the first bad field."""
    try:
        raw: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJSON(f"The request body is not valid JSON ({exc.msg}).") from exc
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        request = MessagesRequest.model_validate(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{param}: {first['msg']}", param=param) from exc
    if request.tool_choice and request.tool_choice.type == "tool" and not request.tool_choice.name:
        raise InvalidRequest("tool_choice.name: Field required", param="tool_choice.name")
    return request


# --- request -> canonical --------------------------------------------------------------


def to_chat_request(request: MessagesRequest) -> JsonObject:
    """The canonical OpenAI chat request for a validated Messages API request."""
    messages: list[JsonObject] = []
    if isinstance(request.system, str):
        messages.append({"role": "system", "content": request.system})
    elif request.system:
        messages.append({"role": "system", "content": [_text_part(b) for b in request.system]})
    for message in request.messages:
        messages.extend(_chat_messages(message))
    chat: JsonObject = {
        "model": request.model,
        "messages": messages,
        "max_tokens": request.max_tokens,
    }
    if request.stop_sequences:
        chat["stop"] = list(request.stop_sequences)
    if request.temperature is not None:
        chat["temperature"] = request.temperature
    if request.top_p is not None:
        chat["top_p"] = request.top_p
    if request.metadata is not None and request.metadata.user_id is not None:
        chat["user"] = request.metadata.user_id
    if request.output_config is not None and request.output_config.format is not None:
        schema = request.output_config.format.json_schema
        chat["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }
    if request.tools:
        chat["tools"] = [_function_tool(tool) for tool in request.tools]
        if request.tool_choice is not None:
            _add_tool_choice(chat, request.tool_choice)
    if request.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _text_part(block: TextBlock) -> JsonObject:
    return {"type": "text", "text": block.text}


def _image_part(block: ImageBlock) -> JsonObject:
    source = block.source
    url = (
        source.url
        if isinstance(source, URLImageSource)
        else f"data:{source.media_type};base64,{source.data}"
    )
    return {"type": "image_url", "image_url": {"url": url}}


def _chat_messages(message: InputMessage) -> list[JsonObject]:
    """One Anthropic turn as OpenAI messages (a user turn with tool results becomes
    the `tool` messages first, then the user's remaining content)."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if message.role == "assistant":
        return _assistant_message(message.content)
    tool_messages: list[JsonObject] = []
    parts: list[JsonObject] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            parts.append(_text_part(block))
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
        elif isinstance(block, ToolResultBlock):
            tool_messages.append(_tool_message(block, parts))
    if message.role == "system":
        parts = [part for part in parts if part["type"] == "text"]
    if parts:
        return [*tool_messages, {"role": message.role, "content": parts}]
    return tool_messages


def _tool_message(block: ToolResultBlock, user_parts: list[JsonObject]) -> JsonObject:
    """A `tool` message; images in the result join the user's parts (a tool message
    takes text only)."""
    if isinstance(block.content, str):
        text = block.content
    else:
        text = "".join(b.text for b in block.content if isinstance(b, TextBlock))
        user_parts.extend(_image_part(b) for b in block.content if isinstance(b, ImageBlock))
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _assistant_message(blocks: list[Any]) -> list[JsonObject]:
    texts = [block.text for block in blocks if isinstance(block, TextBlock)]
    calls = [
        canonical.tool_call(block.id, block.name, block.input)
        for block in blocks
        if isinstance(block, ToolUseBlock)
    ]
    if not texts and not calls:
        return []
    message: JsonObject = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _function_tool(tool: Tool) -> JsonObject:
    function: JsonObject = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _add_tool_choice(chat: JsonObject, choice: ToolChoice) -> None:
    match choice.type:
        case "auto" | "none":
            chat["tool_choice"] = choice.type
        case "any":
            chat["tool_choice"] = "required"
        case "tool":
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    if choice.disable_parallel_tool_use:
        chat["parallel_tool_calls"] = False
