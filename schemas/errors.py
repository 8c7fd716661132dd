"""Tollway's error tree. Behaviour lives on the class, never in message text.

Each class states the HTTP status it answers with, the OpenAI error `type` and
`code` it carries in the body, and whether the failed operation may be retried.
Adapters translate vendor errors into this tree at the edge and re-raise
`from exc`; handlers turn any `TollwayError` into an OpenAI error body.

    TollwayError                      500 server_error
    ├── InvalidRequest                400 invalid_request_error
    │   ├── MalformedJSON             400  code=invalid_json
    │   ├── BodyTooLarge              413  code=request_too_large
    │   ├── UnknownModel              404  code=model_not_found
    │   ├── ResponseTooLarge          400  code=response_too_large
    │   └── WalletLimitExceeded       400  code=wallet_limit_exceeded  (names the limit)
    ├── AuthenticationFailed          401 authentication_error  code=invalid_api_key
    ├── PermissionDenied              403 permission_error      code=permission_denied
    │   └── ModelNotAllowed           403  code=model_not_allowed  (names the policy)
    ├── NotFound                      404 not_found_error
    ├── RateLimited                   429 rate_limit_error       retriable
    │   └── QueueLimitExceeded        429  code=queue_limit_exceeded  (Retry-After)
    ├── BudgetExceeded                429 budget_exceeded  code=budget_exceeded  (Retry-After)
    ├── ServiceUnavailable            503 service_unavailable    retriable
    ├── DeadlineExceeded              504 timeout                retriable
    ├── ProviderError                 502 upstream_error
    │   ├── ProviderRateLimited       429 rate_limit_error       retriable
    │   ├── ProviderServerError       502 upstream_error         retriable
    │   ├── ProviderTimeout           504 timeout                retriable
    │   ├── ProviderConnectionError   502 upstream_error         retriable
    │   ├── ProviderBadRequest        400 invalid_request_error  (never retried or failed over)
    │   └── StreamBroken              502 upstream_error  (chunks already sent: ends the plan)
    ├── AllProvidersFailed            502 upstream_error  (keeps every route's error, in order)
    └── DeadLetter                    (not an HTTP error: the record goes to tollway.dead-letters)
        └── CorruptRecord
"""

from __future__ import annotations

from typing import Any, ClassVar


class TollwayError(Exception):
    """Root of every error Tollway raises on purpose."""

    http_status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None
    retriable: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error format: {"error": {message, type, param, code}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After)."""
        return {}


class InvalidRequest(TollwayError):
    http_status = 400
    error_type = "invalid_request_error"


class MalformedJSON(InvalidRequest):
    code = "invalid_json"


class BodyTooLarge(InvalidRequest):
    http_status = 413
    code = "request_too_large"


class UnknownModel(InvalidRequest):
    http_status = 404
    code = "model_not_found"


class ResponseTooLarge(InvalidRequest):
    """The answer cannot travel back through Kafka (`RESULT_BODY_MAX_BYTES`): ask for less
    per request (fewer embedding inputs, base64 vectors)."""

    code = "response_too_large"


class WalletLimitExceeded(InvalidRequest):
    """A denial-of-wallet cap refused the request (input size, `max_tokens`, batch lines).

    `limit` names the cap (`max_input_bytes`, `max_output_tokens`, `max_batch_lines`) as
    the tenancy config spells it (workers/tenancy/model.py `WalletLimits`); the message
    says the value and whose it is (the team's or the gateway's default).
    """

    code = "wallet_limit_exceeded"

    def __init__(self, message: str, *, limit: str | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.limit = limit


class AuthenticationFailed(TollwayError):
    http_status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(TollwayError):
    """The caller may not use this route (or it is switched off), whoever they are."""

    http_status = 403
    error_type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    """A governance policy does not approve the model (after aliases) for this caller.

    `policy` names which one refused: `team`, `key` or `tag:<tag>`; the message says it
    too, so an application developer knows whom to ask.
    """

    code = "model_not_allowed"

    def __init__(
        self, message: str, *, policy: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.policy = policy


class NotFound(TollwayError):
    http_status = 404
    error_type = "not_found_error"
    code = "not_found"


class _RetryAfter(TollwayError):
    """Mixin behaviour: carries a Retry-After in whole seconds."""

    def __init__(
        self, message: str, *, retry_after_s: float | None = None, param: str | None = None
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after_s)))}


class RateLimited(_RetryAfter):
    http_status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retriable = True


class QueueLimitExceeded(RateLimited):
    """The team has as much async and batch work queued as its `max_queued_requests`
    allows; retry once some of it finished (Retry-After is a hint, not a promise)."""

    code = "queue_limit_exceeded"


class BudgetExceeded(_RetryAfter):
    """A hard budget of a scope the request spends against is used up.

    `scope` is `team:<id>`, `key:<id>`, `model:<team>/<model>` or `global`; the
    Retry-After header says when enough spend leaves the window. Not retriable:
    trying again before then cannot succeed.
    """

    http_status = 429
    error_type = "budget_exceeded"
    code = "budget_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        scope: str | None = None,
        window: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s, param=param)
        self.scope = scope
        self.window = window


class ServiceUnavailable(_RetryAfter):
    """A dependency (Kafka) is unreachable: the work was NOT accepted."""

    http_status = 503
    error_type = "service_unavailable"
    code = "service_unavailable"
    retriable = True


class DeadlineExceeded(TollwayError):
    http_status = 504
    error_type = "timeout"
    code = "deadline_exceeded"
    retriable = True


class ProviderError(TollwayError):
    """An upstream provider call failed. `upstream_status` is what the provider said.

    `ends_plan`: the error ends the whole route plan (no retry, no failover).
    """

    http_status = 502
    error_type = "upstream_error"
    code = "provider_error"
    ends_plan: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        upstream_code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.upstream_status = upstream_status
        self.upstream_code = upstream_code


class ProviderRateLimited(ProviderError):
    http_status = 429
    error_type = "rate_limit_error"
    code = "provider_rate_limited"
    retriable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        upstream_status: int | None = 429,
        upstream_code: str | None = None,
    ) -> None:
        super().__init__(message, upstream_status=upstream_status, upstream_code=upstream_code)
        self.retry_after_s = retry_after_s


class ProviderServerError(ProviderError):
    retriable = True


class ProviderTimeout(ProviderError):
    http_status = 504
    error_type = "timeout"
    code = "provider_timeout"
    retriable = True


class ProviderConnectionError(ProviderError):
    code = "provider_unreachable"
    retriable = True


class ProviderBadRequest(ProviderError):
    """The provider rejected the request itself: retrying or failing over cannot help."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
    ends_plan = True

    def to_body(self) -> dict[str, Any]:
        body = super().to_body()
        if self.upstream_code is not None:
            body["error"]["code"] = self.upstream_code
        return body


class StreamBroken(ProviderError):
    """A streamed call failed after chunks reached the client: no retry, no failover."""

    code = "stream_broken"
    ends_plan = True


class AllProvidersFailed(TollwayError):
    """Every planned route failed; `errors` keeps each route's error in order."""

    http_status = 502
    error_type = "upstream_error"
    code = "all_providers_failed"

    def __init__(self, errors: list[tuple[str, ProviderError]]) -> None:
        summary = "; ".join(f"{route}: {type(err).__name__}" for route, err in errors)
        super().__init__(f"all providers failed ({summary})" if errors else "no route to try")
        self.errors = errors

    @property
    def last(self) -> ProviderError | None:
        return self.errors[-1][1] if self.errors else None


class DeadLetter(TollwayError):
    """A record that no retry can fix; the consumer sends it to the dead-letter topic."""

    error_type = "dead_letter"


class CorruptRecord(DeadLetter):
    code = "corrupt_record"
