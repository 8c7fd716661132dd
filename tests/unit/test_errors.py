"""schemas/errors.py: behaviour lives on the class (status, OpenAI type/code, retriable)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Final

import pytest

from schemas import errors
from schemas.errors import (
    AllProvidersFailed,
    AuthenticationFailed,
    BodyTooLarge,
    BudgetExceeded,
    CorruptRecord,
    DeadLetter,
    DeadlineExceeded,
    InvalidRequest,
    MalformedJSON,
    ModelNotAllowed,
    NotFound,
    PermissionDenied,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderServerError,
    ProviderTimeout,
    QueueLimitExceeded,
    RateLimited,
    ResponseTooLarge,
    ServiceUnavailable,
    StreamBroken,
    TollwayError,
    UnknownModel,
    WalletLimitExceeded,
)
from schemas.openai import ErrorBody

# class -> (http_status, error_type, code, retriable). Every public class must be here.
TABLE: Final[dict[type[TollwayError], tuple[int, str, str | None, bool]]] = {
    TollwayError: (500, "server_error", None, False),
    InvalidRequest: (400, "invalid_request_error", None, False),
    MalformedJSON: (400, "invalid_request_error", "invalid_json", False),
    BodyTooLarge: (413, "invalid_request_error", "request_too_large", False),
    UnknownModel: (404, "invalid_request_error", "model_not_found", False),
    ResponseTooLarge: (400, "invalid_request_error", "response_too_large", False),
    WalletLimitExceeded: (400, "invalid_request_error", "wallet_limit_exceeded", False),
    AuthenticationFailed: (401, "authentication_error", "invalid_api_key", False),
    PermissionDenied: (403, "permission_error", "permission_denied", False),
    ModelNotAllowed: (403, "permission_error", "model_not_allowed", False),
    NotFound: (404, "not_found_error", "not_found", False),
    RateLimited: (429, "rate_limit_error", "rate_limit_exceeded", True),
    QueueLimitExceeded: (429, "rate_limit_error", "queue_limit_exceeded", True),
    BudgetExceeded: (429, "budget_exceeded", "budget_exceeded", False),
    ServiceUnavailable: (503, "service_unavailable", "service_unavailable", True),
    DeadlineExceeded: (504, "timeout", "deadline_exceeded", True),
    ProviderError: (502, "upstream_error", "provider_error", False),
    ProviderRateLimited: (429, "rate_limit_error", "provider_rate_limited", True),
    ProviderServerError: (502, "upstream_error", "provider_error", True),
    ProviderTimeout: (504, "timeout", "provider_timeout", True),
    ProviderConnectionError: (502, "upstream_error", "provider_unreachable", True),
    ProviderBadRequest: (400, "invalid_request_error", "invalid_request", False),
    StreamBroken: (502, "upstream_error", "stream_broken", False),
    AllProvidersFailed: (502, "upstream_error", "all_providers_failed", False),
    DeadLetter: (500, "dead_letter", None, False),
    CorruptRecord: (500, "dead_letter", "corrupt_record", False),
}


def _make(cls: type[TollwayError]) -> TollwayError:
    """One instance of any class in the tree (AllProvidersFailed takes errors, not a message)."""
    if cls is AllProvidersFailed:
        return AllProvidersFailed([("a", ProviderServerError("a: upstream answered 500"))])
    return cls("something went wrong")


def test_the_table_names_every_public_error_class() -> None:
    public = {
        obj
        for name, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, TollwayError) and not name.startswith("_")
    }
    assert public == set(TABLE)


@pytest.mark.parametrize(("cls", "expected"), list(TABLE.items()), ids=[c.__name__ for c in TABLE])
def test_class_behaviour(
    cls: type[TollwayError], expected: tuple[int, str, str | None, bool]
) -> None:
    error = _make(cls)
    assert (error.http_status, error.error_type, error.code, error.retriable) == expected


@pytest.mark.parametrize("cls", list(TABLE), ids=lambda c: c.__name__)
def test_to_body_is_the_openai_error_format(cls: type[TollwayError]) -> None:
    error = _make(cls)
    body = error.to_body()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == error.message == str(error)
    assert body["error"]["type"] == cls.error_type
    assert body["error"]["code"] == cls.code
    ErrorBody.model_validate(body)


def test_param_is_carried_into_the_body() -> None:
    body = UnknownModel("The model `x` does not exist", param="model").to_body()
    assert body == {
        "error": {
            "message": "The model `x` does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


RetryAfterFactory = Callable[[float | None], TollwayError]


@pytest.mark.parametrize(
    "make",
    [
        lambda s: RateLimited("slow down", retry_after_s=s),
        lambda s: ServiceUnavailable("kafka away", retry_after_s=s),
        lambda s: BudgetExceeded("team:a spent its 24h budget", retry_after_s=s, scope="team:a"),
    ],
    ids=["RateLimited", "ServiceUnavailable", "BudgetExceeded"],
)
@pytest.mark.parametrize(
    ("retry_after_s", "headers"),
    [
        (None, {}),
        (0.0, {"retry-after": "1"}),  # never tell a client to retry at once
        (0.2, {"retry-after": "1"}),
        (1.0, {"retry-after": "1"}),
        (2.6, {"retry-after": "3"}),
        (30.0, {"retry-after": "30"}),
    ],
)
def test_retry_after_header(
    make: RetryAfterFactory, retry_after_s: float | None, headers: dict[str, str]
) -> None:
    assert make(retry_after_s).headers() == headers


@pytest.mark.parametrize(
    "cls", [c for c in TABLE if c not in (RateLimited, ServiceUnavailable, BudgetExceeded)]
)
def test_other_errors_add_no_headers(cls: type[TollwayError]) -> None:
    assert _make(cls).headers() == {}


def test_budget_exceeded_names_its_scope_and_window() -> None:
    error = BudgetExceeded("spent", retry_after_s=30, scope="key:k1", window="1h")
    assert (error.scope, error.window, error.retriable) == ("key:k1", "1h", False)
    assert error.headers() == {"retry-after": "30"}
    assert BudgetExceeded("spent").headers() == {}


def test_provider_bad_request_carries_the_upstream_code() -> None:
    error = ProviderBadRequest(
        "openai: upstream answered 400",
        upstream_status=400,
        upstream_code="context_length_exceeded",
    )
    assert error.upstream_status == 400
    assert error.upstream_code == "context_length_exceeded"
    assert error.to_body()["error"]["code"] == "context_length_exceeded"
    assert not error.retriable


def test_provider_bad_request_without_upstream_code_keeps_its_own() -> None:
    assert ProviderBadRequest("bad").to_body()["error"]["code"] == "invalid_request"


def test_provider_rate_limited_defaults_and_retry_after() -> None:
    error = ProviderRateLimited("429", retry_after_s=2.5, upstream_code="rate_limit_exceeded")
    assert error.upstream_status == 429
    assert error.retry_after_s == 2.5
    assert error.upstream_code == "rate_limit_exceeded"


def test_all_providers_failed_keeps_errors_in_order() -> None:
    first = ProviderTimeout("a: timed out")
    second = ProviderRateLimited("b: upstream answered 429")
    third = ProviderServerError("a: upstream answered 503", upstream_status=503)
    error = AllProvidersFailed([("a", first), ("b", second), ("a", third)])
    assert error.errors == [("a", first), ("b", second), ("a", third)]
    assert error.last is third
    assert error.message == (
        "all providers failed (a: ProviderTimeout; b: ProviderRateLimited; a: ProviderServerError)"
    )


def test_all_providers_failed_with_no_route() -> None:
    error = AllProvidersFailed([])
    assert error.last is None
    assert error.message == "no route to try"


@pytest.mark.parametrize(
    ("cls", "parent"),
    [
        (MalformedJSON, InvalidRequest),
        (BodyTooLarge, InvalidRequest),
        (UnknownModel, InvalidRequest),
        (ResponseTooLarge, InvalidRequest),
        (ProviderRateLimited, ProviderError),
        (ProviderServerError, ProviderError),
        (ProviderTimeout, ProviderError),
        (ProviderConnectionError, ProviderError),
        (ProviderBadRequest, ProviderError),
        (CorruptRecord, DeadLetter),
    ],
)
def test_tree_shape(cls: type[TollwayError], parent: type[TollwayError]) -> None:
    assert issubclass(cls, parent)
