"""Schemathesis against the whole ingress in-process (ASGI, fake bus, no Kafka): every
operation of its /openapi.json, valid and invalid data, with fuzzed Authorization, Host
and X-Forwarded-Host headers; once with `TOLLWAY_AUTH=open`, once with virtual keys.

Checks on every answer:
- no 5xx, ever;
- every error body is the OpenAI error format (Anthropic's on /v1/messages);
- status, content type, headers and body conform to the document;
- data the document calls invalid is refused (negative_data_rejection);
- a refused request publishes nothing; an accepted one publishes exactly one record (a
  bulk call: one per item its answer lists as queued);
- with keys, nothing but the active key reaches a handler of the data plane.

Short by default (CI): `SHORT_EXAMPLES` generated cases per operation. Long with
`TOLLWAY_FUZZ_EXAMPLES=N` (`make fuzz`: 100, ~10 minutes here): N cases per operation, plus
schemathesis's coverage phase (every boundary, missing field and wrong type the
document defines: some 4,000 cases).
"""

from __future__ import annotations

import os
from typing import Any, Final

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks as builtin
from schemathesis.core.failures import Failure
from schemathesis.generation.case import Case as GenericCase
from schemathesis.schemas import APIOperation

from ingress.bulk import BULK_PATH
from ingress.credentials import needs_key
from ingress.idempotency import REPLAYED_HEADER
from schemas.openai import ErrorBody
from tests.unit.ingress_stack import ADMIN_KEY, ROUTES, IngressStack, build_stack

Case = GenericCase[APIOperation[Any, Any, Any, Any]]

SHORT_EXAMPLES: Final = 5
LONG: Final = "TOLLWAY_FUZZ_EXAMPLES" in os.environ
EXAMPLES: Final = int(os.environ.get("TOLLWAY_FUZZ_EXAMPLES", str(SHORT_EXAMPLES)))
if LONG:  # an operation's long run (and its shrinking) outlasts the suite's 300 s per test
    pytestmark = pytest.mark.timeout(4 * 3600)

OPEN: Final = build_stack(auth="open")
KEYS: Final = build_stack(auth="keys")
assert KEYS.virtual_key is not None
assert KEYS.revoked_key is not None
open_schema = schemathesis.openapi.from_asgi("/openapi.json", OPEN.asgi)
keys_schema = schemathesis.openapi.from_asgi("/openapi.json", KEYS.asgi)

PUBLISHING: Final = frozenset(
    {"/v1/chat/completions", "/v1/async/chat/completions", "/v1/embeddings", "/v1/messages"}
)
INJECTIONS: Final = (
    "' OR '1'='1",
    "tw-x' OR 1=1 --",
    "1; DROP TABLE tollway.requests --",
    "${jndi:ldap://127.0.0.1/a}",
    "../../etc/passwd",
)
# What a client can put in a header: latin-1 without CR/LF, starting with a visible char.
_HEADER_TEXT: Final = st.from_regex(r"\A[!-~][ -~\xa0-\xff]{0,120}\Z")


def _authorization(*valid_keys: str) -> st.SearchStrategy[str | None]:
    bearer_of = [f"Bearer {key}" for key in (ADMIN_KEY, *valid_keys)]
    return st.one_of(
        st.none(),
        st.sampled_from(bearer_of),
        st.sampled_from([f"bearer   {key}  " for key in (ADMIN_KEY, *valid_keys)]),
        st.builds(lambda token: f"Bearer {token}", _HEADER_TEXT),
        st.sampled_from([f"Bearer {s}" for s in INJECTIONS]),
        _HEADER_TEXT,
    )


HOSTS: Final = st.sampled_from(
    [None, "testserver", "evil.example", "127.0.0.1:1", "[::1]", "api.openai.com", "a" * 300]
)
KNOWN_MODELS: Final = st.sampled_from([None, *ROUTES.public_names(), "mock-fast"])


class NotOpenAIError(Failure):
    """An error answer whose body is not the documented error format."""

    code = "TOLLWAY01"
    checks = ("openai_error_format",)
    kind_title = "Error body not in the OpenAI error format"


def _is_anthropic_error(response: Any) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and body.get("type") == "error"
        and isinstance(body.get("error"), dict)
        and isinstance(body["error"].get("message"), str)
    )


def openai_error_format(_: object, response: Any, case: Case) -> bool | None:
    """Every 4xx/5xx body is `{"error": {message, type, param, code}}` (or Anthropic's
    `{"type": "error", "error": {type, message}}` on /v1/messages)."""
    if response.status_code < 400:
        return None
    try:
        ErrorBody.model_validate_json(response.content)
    except ValueError:
        if not (case.operation.path == "/v1/messages" and _is_anthropic_error(response)):
            raise NotOpenAIError(
                operation=case.operation.label,
                title="Error body not in the OpenAI error format",
                message=f"{response.status_code}: {response.content[:300]!r}",
            ) from None
    return True


CHECKS: Final = [
    builtin.not_a_server_error,
    builtin.status_code_conformance,
    builtin.content_type_conformance,
    builtin.response_headers_conformance,
    builtin.response_schema_conformance,
    builtin.negative_data_rejection,
]


def _send(
    stack: IngressStack,
    case: Case,
    *,
    authorization: str | None = None,
    host: str | None = None,
    model: str | None = None,
) -> Any:
    """Send `case` with the drawn headers; check the answer and what was published."""
    if authorization is not None:
        case.headers["Authorization"] = authorization
    if host is not None:
        case.headers["Host"] = host
        case.headers["X-Forwarded-Host"] = "attacker.example"
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive and model is not None and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = model  # reach past the routing table: most drawn names are unknown
    before = len(stack.bus.published)
    response = case.call_and_validate(checks=CHECKS, additional_checks=[openai_error_format])
    published = len(stack.bus.published) - before
    publishing = case.operation.path in PUBLISHING and case.method.upper() == "POST"
    replayed = "true" in (response.headers.get(REPLAYED_HEADER) or [])  # an Idempotency-Key retry
    expected = 1 if publishing and response.status_code < 400 and not replayed else 0
    if case.operation.path == BULK_PATH and response.status_code == 202:  # one per queued item
        expected = sum(1 for entry in response.json()["data"] if "id" in entry)
    assert published == expected, (case.operation.label, response.status_code, published)
    return response


def _fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@open_schema.parametrize()
@open_schema.given(authorization=_authorization(), host=HOSTS, model=KNOWN_MODELS)
@_fuzz_settings(EXAMPLES)
def test_open_mode(
    case: Case, authorization: str | None, host: str | None, model: str | None
) -> None:
    _send(OPEN, case, authorization=authorization, host=host, model=model)


@keys_schema.parametrize()
@keys_schema.given(
    authorization=_authorization(KEYS.virtual_key, KEYS.revoked_key),
    host=HOSTS,
    model=KNOWN_MODELS,
)
@_fuzz_settings(EXAMPLES)
def test_keys_mode(
    case: Case, authorization: str | None, host: str | None, model: str | None
) -> None:
    response = _send(KEYS, case, authorization=authorization, host=host, model=model)
    if not needs_key(case.operation.path):  # probes, the document, admin routes (own key)
        return
    token = (authorization or "").strip().partition(" ")[2].strip()
    if token != KEYS.virtual_key:  # no key, a wrong one, the revoked one, the admin key
        assert response.status_code == 401, (case.operation.label, response.status_code)


if LONG:
    coverage_schema = schemathesis.openapi.from_asgi("/openapi.json", OPEN.asgi)
    coverage_schema.config.phases.update(phases=["coverage"])

    @coverage_schema.parametrize()
    @_fuzz_settings(1)
    def test_coverage_phase(case: Case) -> None:
        """Every boundary value, missing required part and wrong type of the document."""
        _send(OPEN, case, authorization=f"Bearer {ADMIN_KEY}")
