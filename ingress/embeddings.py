"""Admission of POST /v1/embeddings bodies. Pure.

Checks, in order: JSON syntax, the OpenAI schema (`schemas.openai.EmbeddingsRequest`:
input shape, at most `MAX_EMBEDDING_INPUTS` inputs, `encoding_format`, `dimensions`),
the model's route (after the caller's aliases), that the route has a deployment
that can embed (Anthropic has no embeddings API), and that the answer can travel
back through Kafka (`RESULT_BODY_MAX_BYTES`). Each failure is a typed 400 (404 for
an unknown model) rendered in the OpenAI error format; the original bytes travel on.

The size check refuses before any provider is paid for: the answer's size is
estimated from the inputs, the vector length (`dimensions`, or the model's known
default, `KNOWN_EMBEDDING_DIMENSIONS`) and the encoding. It is a floor, not an
exact figure (JSON floats are counted at `FLOAT_JSON_BYTES`), so an answer it lets
through can still be too large; the router refuses that one (`ResponseTooLarge`)
after the call. A model of unknown length is not checked here.
"""

from __future__ import annotations

import math
from typing import Final

from ingress.admission import parse_json_body
from schemas.errors import InvalidRequest, ResponseTooLarge
from schemas.openai import KNOWN_EMBEDDING_DIMENSIONS, EmbeddingsRequest
from schemas.records import RESULT_BODY_MAX_BYTES
from schemas.routes import EMBEDDING_PROVIDERS, ModelRoute, RoutesConfig

FLOAT_JSON_BYTES: Final = 10
"""Fewest bytes one float takes in a JSON vector as providers write them ("-0.0123456,")."""
PER_EMBEDDING_BYTES: Final = 50
"""The `{"object":"embedding","index":N,"embedding":...}` around each vector."""


def parse_embeddings_request(
    body: bytes,
    routes: RoutesConfig,
    *,
    team_id: str | None = None,
    key_id: str | None = None,
    max_result_bytes: int = RESULT_BODY_MAX_BYTES,
) -> EmbeddingsRequest:
    """Validate an embeddings body for this caller (whose aliases count as models)."""
    request = parse_json_body(body, EmbeddingsRequest)
    route = routes.resolve_for(request.model, team_id=team_id, key_id=key_id)
    if not any(d.provider in EMBEDDING_PROVIDERS for d in route.deployments):
        kinds = sorted({d.provider for d in route.deployments})
        raise InvalidRequest(
            f"The model `{request.model}` cannot create embeddings: its deployments "
            f"({', '.join(kinds)}) have no embeddings API.",
            param="model",
        )
    floor = response_bytes_floor(request, route)
    if floor is not None and floor > max_result_bytes:
        raise ResponseTooLarge(
            f"The answer to {request.input_count()} inputs would take at least {floor} bytes, "
            f"more than this gateway carries in one response ({max_result_bytes}). Send fewer "
            "inputs per request, fewer `dimensions`, or `encoding_format: base64`.",
            param="input",
        )
    return request


def response_bytes_floor(request: EmbeddingsRequest, route: ModelRoute) -> int | None:
    """The fewest bytes the answer can take, or None when the vector length is unknown."""
    dimensions = request.dimensions or _known_dimensions(request.model, route)
    if dimensions is None:
        return None
    if request.encoding_format == "base64":
        per_vector = 4 * math.ceil(dimensions * 4 / 3)  # float32 bytes, base64
    else:
        per_vector = dimensions * FLOAT_JSON_BYTES
    return request.input_count() * (per_vector + PER_EMBEDDING_BYTES)


def _known_dimensions(model: str, route: ModelRoute) -> int | None:
    """The smallest default length among the upstream models the route may call."""
    names = {d.model or model for d in route.deployments if d.provider in EMBEDDING_PROVIDERS}
    known = [KNOWN_EMBEDDING_DIMENSIONS[n] for n in names if n in KNOWN_EMBEDDING_DIMENSIONS]
    if len(known) != len(names):
        return None  # a model of unknown length could answer: do not guess
    return min(known)
