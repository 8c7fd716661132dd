"""Tenancy's additions to the error tree (schemas/errors.py). Pure.

InvalidRequest
└── Conflict        409 invalid_request_error  code=conflict
                    (the id is taken, the team still has keys, the digest is in use)
"""

from __future__ import annotations

from schemas.errors import InvalidRequest


class Conflict(InvalidRequest):
    """The change contradicts the current config; the message says what to do first."""

    http_status = 409
    code = "conflict"
