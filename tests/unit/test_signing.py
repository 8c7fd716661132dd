"""workers/callbacks/signing.py, checked against the independent `standardwebhooks` package."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from workers.callbacks.signing import (
    MIN_SECRET_BYTES,
    InvalidSecret,
    new_secret,
    secret_key,
    sign_headers,
    verify,
)

BODY = b'{"type":"batch.completed","data":{"id":"batch_1"}}'


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    now = int(time.time())
    headers = sign_headers([secret_key(secret)], "msg_1", now, BODY)
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "batch.completed",
        "data": {"id": "batch_1"},
    }
    assert verify(secret_key(secret), headers, BODY, now)


def test_tampering_and_other_secrets_fail() -> None:
    secret, other = new_secret(), new_secret()
    now = int(time.time())
    headers = sign_headers([secret_key(secret)], "msg_1", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_2"})
    assert not verify(secret_key(secret), headers, BODY, now + 301)  # too old


def test_rotation_sends_two_signatures_either_verifies() -> None:
    old, new = new_secret(), new_secret()
    now = int(time.time())
    headers = sign_headers([secret_key(new), secret_key(old)], "msg_r", now, BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in headers["webhook-signature"].split(" "))
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)


def test_the_id_is_what_the_caller_gives_so_retries_keep_it() -> None:
    key = secret_key(new_secret())
    first = sign_headers([key], "msg_same", 1_700_000_000, BODY)
    retry = sign_headers([key], "msg_same", 1_700_000_900, BODY)
    assert first["webhook-id"] == retry["webhook-id"] == "msg_same"
    assert first["webhook-signature"] != retry["webhook-signature"]  # the timestamp is signed


@pytest.mark.parametrize(
    "secret",
    [
        "nope_" + base64.b64encode(b"x" * 32).decode(),
        "whsec_" + base64.b64encode(b"x" * (MIN_SECRET_BYTES - 1)).decode(),
        "whsec_not base64!",
    ],
)
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(InvalidSecret):
        secret_key(secret)


def test_no_key_no_signature() -> None:
    with pytest.raises(InvalidSecret):
        sign_headers([], "msg", 1, BODY)
