"""Pydantic models of the OpenAI Chat Completions wire format (the canonical shape).

The ingress validates every request against `ChatCompletionRequest` once; after
that the body travels as JSON bytes and adapters translate it to their
provider's format. Unknown top-level fields are rejected (OpenAI does the same)
so a typo is a clear 400 rather than a silently ignored parameter.

Limits named here (denial-of-wallet guards, per request):
`MAX_MESSAGES`, `MAX_TOKENS_LIMIT`, `MAX_N`; for embeddings `MAX_EMBEDDING_INPUTS`
(OpenAI's own limit) and `MAX_EMBEDDING_DIMENSIONS`.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_MESSAGES: Final = 2_048
MAX_TOKENS_LIMIT: Final = 1_000_000
MAX_N: Final = 16

EMBEDDINGS_ENDPOINT: Final = "/v1/embeddings"
"""The envelope `endpoint` of an embeddings request (routers dispatch on it)."""
MAX_EMBEDDING_INPUTS: Final = 2_048
MAX_EMBEDDING_DIMENSIONS: Final = 65_536
MAX_TOKEN_ID: Final = 2**31 - 1
KNOWN_EMBEDDING_DIMENSIONS: Final = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    "gemini-embedding-001": 3072,
}
"""Default vector length of well-known embedding models (when `dimensions` is absent)."""

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    """Nested provider objects (tools, parts) evolve fast: keep unknown keys."""

    model_config = ConfigDict(extra="allow", frozen=True)


class ContentPart(_Open):
    type: str


class ToolCall(_Open):
    id: str
    type: str = "function"
    function: dict[str, Any]


class ChatMessage(_Open):
    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Open):
    include_usage: bool | None = None


class ChatCompletionRequest(_Strict):
    """POST /v1/chat/completions body."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int | None, Field(ge=1, le=MAX_TOKENS_LIMIT)] = None
    max_completion_tokens: Annotated[int | None, Field(ge=1, le=MAX_TOKENS_LIMIT)] = None
    temperature: Annotated[float | None, Field(ge=0, le=2)] = None
    top_p: Annotated[float | None, Field(ge=0, le=1)] = None
    n: Annotated[int | None, Field(ge=1, le=MAX_N)] = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    frequency_penalty: Annotated[float | None, Field(ge=-2, le=2)] = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int | None, Field(ge=0, le=20)] = None
    user: str | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    verbosity: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    web_search_options: dict[str, Any] | None = None


EmbeddingInput = str | list[str] | list[int] | list[list[int]]


def check_embedding_input(value: object) -> None:
    """Raise ValueError (naming the bad item) unless `value` is a valid `input`.

    Valid: a non-empty string; or 1..MAX_EMBEDDING_INPUTS items that are all non-empty
    strings, all token ids, or all non-empty token-id arrays. Token ids are integers
    in 0..MAX_TOKEN_ID (booleans are not integers here).
    """
    if isinstance(value, str):
        if not value:
            raise ValueError("'input' must not be an empty string")
        return
    if not isinstance(value, list):
        raise ValueError(  # noqa: TRY004 - pydantic turns ValueError (not TypeError) into a 400
            "'input' must be a string, an array of strings, an array of token ids "
            "or an array of token-id arrays"
        )
    if not value:
        raise ValueError("'input' must not be an empty array")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise ValueError(
            f"'input' holds {len(value)} items; at most {MAX_EMBEDDING_INPUTS} are allowed"
        )
    first = value[0]
    if isinstance(first, str):
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ValueError(f"'input[{index}]' must be a non-empty string like input[0]")
    elif isinstance(first, list):
        for index, item in enumerate(value):
            if not isinstance(item, list) or not item:
                raise ValueError(f"'input[{index}]' must be a non-empty token-id array")
            _check_token_ids(item, f"input[{index}]")
    else:
        _check_token_ids(value, "input")


def _check_token_ids(tokens: list[object], param: str) -> None:
    for index, token in enumerate(tokens):
        if not isinstance(token, int) or isinstance(token, bool) or not 0 <= token <= MAX_TOKEN_ID:
            raise ValueError(f"'{param}[{index}]' must be a token id (0..{MAX_TOKEN_ID})")


class EmbeddingsRequest(_Strict):
    """POST /v1/embeddings body (OpenAI's `EmbeddingCreateParams`)."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int | None, Field(ge=1, le=MAX_EMBEDDING_DIMENSIONS)] = None
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_shape(cls, value: object) -> object:
        check_embedding_input(value)
        return value

    def input_count(self) -> int:
        """How many vectors the answer holds."""
        if isinstance(self.input, str):
            return 1
        return 1 if isinstance(self.input[0], int) else len(self.input)


class EmbeddingUsage(_Open):
    prompt_tokens: int = 0
    total_tokens: int = 0


class Embedding(_Open):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    """Floats, or base64 of little-endian float32 when `encoding_format` is base64."""


class EmbeddingsResponse(_Open):
    """The embeddings answer, as providers and the gateway return it."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class CompletionUsage(_Open):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class Choice(_Open):
    index: int
    message: ChatMessage
    finish_reason: str | None = None


class ChatCompletion(_Open):
    """A chat completion response, as providers and the gateway return it."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage | None = None


class ErrorDetail(_Strict):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(_Strict):
    """The OpenAI error body: {"error": {...}}."""

    error: ErrorDetail
