"""Google Gemini embeddings: canonical embeddings request -> batchEmbedContents -> canonical.

POST {base_url}/v1beta/models/{model}:batchEmbedContents with `x-goog-api-key`, one
Gemini request per input, in order (field names from the Gemini API reference,
camelCase on the wire):

    {"requests": [{"model": "models/{model}",
                   "content": {"parts": [{"text": "..."}]},
                   "outputDimensionality": 256}, ...]}     <- `dimensions`, when given

The answer `{"embeddings": [{"values": [...]}, ...]}` becomes OpenAI's list object,
one `embedding` per input; with `encoding_format: base64` each vector is the base64
of its little-endian float32 bytes (what OpenAI sends, and what the openai SDK asks
for by default). Refused with 400 `unsupported_parameter`: token-id inputs (Gemini
takes text only). Ignored: `user`.

Usage: `usageMetadata.promptTokenCount` when the answer carries it (Vertex does).
The Gemini Developer API reports no tokens for embeddings; then the prompt tokens
are ESTIMATED at 4 characters a token per input (at least 1), so the call is still
priced and counted against budgets instead of passing for free.

Errors are Gemini's google.rpc.Status bodies, mapped by `gemini.error_from_response`.
Gemini caps the size of a batch (100 requests at the time of writing) and answers a
larger one with its own 400, which reaches the client as such.
"""

from __future__ import annotations

import base64
import math
import os
import struct
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from schemas.errors import ProviderServerError
from schemas.records import Usage
from schemas.routes import Deployment
from workers.providers.base import ProviderReply
from workers.providers.canonical import JsonObject, unsupported
from workers.providers.gemini import error_from_response
from workers.providers.http import HttpClient
from workers.providers.transport import api_key, json_object, post_json, token_count

CHARS_PER_TOKEN_ESTIMATE: Final = 4
_PROVIDER: Final = "Gemini embeddings"


def texts_of(request: Mapping[str, Any]) -> list[str]:
    """The request's inputs as texts, in order (token-id inputs are refused)."""
    value = request["input"]
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, str) for item in value):
        return list(value)
    raise unsupported(_PROVIDER, "token-id inputs (text only)", "input")


def to_batch_embed_request(request: Mapping[str, Any], upstream_model: str) -> JsonObject:
    """The batchEmbedContents body for a canonical embeddings request."""
    dimensions = request.get("dimensions")
    requests: list[JsonObject] = []
    for text in texts_of(request):
        one: JsonObject = {
            "model": f"models/{upstream_model}",
            "content": {"parts": [{"text": text}]},
        }
        if dimensions is not None:
            one["outputDimensionality"] = dimensions
        requests.append(one)
    return {"requests": requests}


def estimate_prompt_tokens(texts: Sequence[str]) -> int:
    """Prompt tokens when Gemini reports none: ceil(chars / 4) per input, at least 1 each."""
    return sum(max(1, math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)) for text in texts)


def encode_base64(values: Sequence[float]) -> str:
    """A vector as OpenAI's base64 encoding: little-endian float32 bytes, base64."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def from_batch_embed(
    answer: Mapping[str, Any], request: Mapping[str, Any], model: str
) -> tuple[bytes, Usage]:
    """(OpenAI embeddings list body, usage) from a BatchEmbedContentsResponse.

    Raises ValueError/TypeError/KeyError when the answer is not one, or holds another
    number of vectors than the request has inputs.
    """
    texts = texts_of(request)
    embeddings = answer["embeddings"]
    if not isinstance(embeddings, list) or len(embeddings) != len(texts):
        raise ValueError("the answer does not hold one embedding per input")
    as_base64 = request.get("encoding_format") == "base64"
    data: list[JsonObject] = []
    for index, embedding in enumerate(embeddings):
        values = [float(v) for v in embedding["values"]]
        data.append(
            {
                "object": "embedding",
                "index": index,
                "embedding": encode_base64(values) if as_base64 else values,
            }
        )
    metadata = answer.get("usageMetadata")
    reported = metadata.get("promptTokenCount") if isinstance(metadata, dict) else None
    prompt_tokens = token_count(reported) if reported is not None else estimate_prompt_tokens(texts)
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    usage: Usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 0,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
    }
    return orjson.dumps(body), usage


class GeminiEmbeddingProvider:
    """`EmbeddingProvider` for Gemini batchEmbedContents over the caller's pooled client."""

    def __init__(self, *, client: HttpClient, environ: Mapping[str, str] = os.environ) -> None:
        self._client = client
        self._environ = environ

    async def embed(self, deployment: Deployment, request: dict[str, Any]) -> ProviderReply:
        upstream_model = str(deployment.model or request["model"]).removeprefix("models/")
        payload = to_batch_embed_request(request, upstream_model)
        # Quoted whole: a client-chosen model name must not reach another path or host.
        quoted = urllib.parse.quote(upstream_model, safe="")
        url = f"{deployment.base_url.rstrip('/')}/v1beta/models/{quoted}:batchEmbedContents"
        key = api_key(deployment, self._environ)
        response = await post_json(
            self._client,
            deployment,
            url,
            headers={"x-goog-api-key": key} if key else {},
            payload=payload,
        )
        if response.status_code >= 300:
            raise error_from_response(
                deployment, response.status_code, response.headers, response.content
            )
        answer = json_object(deployment, response.content)
        try:
            body, usage = from_batch_embed(answer, request, upstream_model)
        except (KeyError, TypeError, ValueError, AttributeError, struct.error) as exc:
            raise ProviderServerError(f"{deployment.name}: answer is not usable") from exc
        return ProviderReply(body=body, usage=usage, served_model=upstream_model)

    async def aclose(self) -> None:
        """The client belongs to the caller (the registry), which closes it."""
