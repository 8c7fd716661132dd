"""Virtual keys through real processes: the stack `tollway up` starts, in keys mode.

Its own small stack (mock provider, one router, the ingress; no accounting pipeline):
the bootstrap key of team `default` that the stack made (deploy/local_tenancy.py), a
second team and key created through the admin API, and what isolation and revocation
look like from outside.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

import anthropic
import httpx
import openai
import pytest

from deploy.stack import STATE_DIR, Stack
from tests.integration.conftest import free_port

pytestmark = pytest.mark.e2e

ADMIN_KEY: Final = "e2e-admin-key-0123456789abcdefghijkl"
ADMIN: Final = {"authorization": f"Bearer {ADMIN_KEY}"}
CHAT: Final = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CORE: Final = ("mock-provider", "router-1", "ingress")


@pytest.fixture(scope="module")
def keyed(kafka_bootstrap: str) -> Iterator[Stack]:
    stack = Stack(
        ingress_port=free_port(),
        mock_port=free_port(),
        clickhouse_port=free_port(),
        clickhouse_data=STATE_DIR / "clickhouse-e2e-auth",
        routers=1,
        mock_latency_ms=5,
        log_dir=STATE_DIR / "logs" / "e2e-auth",
        extra_env={"TOLLWAY_AUTH": "keys", "TOLLWAY_ADMIN_KEY": ADMIN_KEY},
    )
    stack.components = [c for c in stack.plan(kafka_bootstrap) if c.name in CORE]
    deadline = time.monotonic() + 90
    try:
        for component in stack.components:
            component.start(stack.log_dir)
        for component in stack.components:
            stack.wait_healthy(component, deadline)
        yield stack
    finally:
        stack.stop()


def test_the_stacks_own_key_works_with_the_sdks(keyed: Stack) -> None:
    assert keyed.api_key is not None
    assert keyed.auth is not None
    assert keyed.auth.key_file is not None
    assert keyed.auth.key_file.stat().st_mode & 0o777 == 0o600
    with openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=keyed.api_key, max_retries=0) as sdk:
        reply = sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]  # a dict of kwargs
        assert reply.choices[0].message.content
    with anthropic.Anthropic(base_url=keyed.url, api_key=keyed.api_key, max_retries=0) as claude:
        message = claude.messages.create(
            model="gpt-4o-mini", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content


def test_without_a_valid_key_every_call_is_a_401(keyed: Stack) -> None:
    with (
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="any", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        sdk.chat.completions.create(**CHAT)  # type: ignore[call-overload]  # a dict of kwargs
    assert caught.value.status_code == 401
    with httpx.Client(base_url=keyed.url, timeout=10) as http:
        for value in ("' OR 1=1 --", "Bearer tw-" + "A" * 10_000, "Bearer tw-%00"):
            response = http.get("/v1/models", headers={"authorization": value})
            assert response.status_code in {400, 401}, value[:20]  # a server may refuse first
        spoofed = http.get(
            "/v1/models", headers={"host": "localhost", "x-forwarded-for": "127.0.0.1"}
        )
        assert spoofed.status_code == 401
        assert http.get("/healthz").status_code == 200


def test_teams_are_isolated_and_a_revoked_key_stops_within_a_second(keyed: Stack) -> None:
    assert keyed.api_key is not None
    default = {"authorization": f"Bearer {keyed.api_key}"}
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        team = http.post("/admin/v1/teams", json={"id": "e2e-other"}, headers=ADMIN)
        assert team.status_code in {201, 409}, team.text
        created = http.post("/admin/v1/keys", json={"team_id": "e2e-other"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        other = {"authorization": f"Bearer {created.json()['key']}"}

        accepted = http.post("/v1/async/chat/completions", json=CHAT, headers=default)
        assert accepted.status_code == 202
        request_id = accepted.json()["id"]
        assert http.get(f"/v1/async/requests/{request_id}", headers=default).status_code == 200
        hidden = http.get(f"/v1/async/requests/{request_id}", headers=other)
        assert hidden.status_code == 404
        assert request_id not in hidden.text

        assert http.get("/v1/models", headers=other).status_code == 200
        revoked = http.post(f"/admin/v1/keys/{created.json()['id']}/revoke", headers=ADMIN)
        assert revoked.status_code == 200, revoked.text
        started = time.monotonic()
        while http.get("/v1/models", headers=other).status_code != 401:
            assert time.monotonic() - started < 1.0, "the revoked key still authenticates"
            time.sleep(0.02)
