"""Canary secrets never leave the places they belong (issues 7 and 10).

A whole stack in keys mode (every process, the embedded ClickHouse) runs with three
secrets made up for this run: a provider API key (the `api_key_env` of the routes'
deployments), a virtual key of a team created through the admin API, and the admin
credential. Traffic exercises the paths a secret could leak through: sync, streamed,
async and batch calls, a provider that fails with 500, a provider whose 401 body echoes
the key it was sent (as real providers do in part), bad requests, a revoked key and a
near-miss key. Then every byte the run wrote is searched: the processes' logs, the
broker's segment files (Tollway's producers do not compress, so a record's bytes are
in them as sent - a positive probe proves the search sees topic data), the ClickHouse
rows of every table (column data is compressed on disk, so rows are searched by SQL)
and its data directory, the batch file store, and every error body the clients got.
The dead-letter topics are among the segment files.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final

import httpx
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from analytics.connection import connect
from deploy.stack import REPO_ROOT, STATE_DIR, Stack
from tests.integration.conftest import free_port

pytestmark = pytest.mark.e2e

PROVIDER_KEY_ENV: Final = "TOLLWAY_E2E_CANARY_PROVIDER_KEY"
TEAM: Final = "canary-team"


@dataclass
class Canaries:
    provider_key: str = field(default_factory=lambda: "sk-canary-" + secrets.token_hex(16))
    admin_key: str = field(default_factory=lambda: "canary-admin-" + secrets.token_hex(16))
    probe: str = field(default_factory=lambda: "canary-probe-" + secrets.token_hex(8))
    """Not a secret: sent as message content so the search must find it in the topics."""
    virtual_key: str = ""
    """Made by the admin API during the run."""

    def secrets(self) -> dict[str, str]:
        found = {"provider key": self.provider_key, "admin key": self.admin_key}
        if self.virtual_key:
            # The part after `tw-` is the secret; the prefix alone is everywhere.
            found["virtual key"] = self.virtual_key.removeprefix("tw-")
        return found


class Upstream(BaseHTTPRequestHandler):
    """A provider that fails: `echo-401` answers 401 quoting the key it got, else 500."""

    received_auth: list[str] = []  # noqa: RUF012  # one server per module; read by the test

    def do_POST(self) -> None:  # the stdlib's handler naming
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        auth = self.headers.get("authorization", "")
        Upstream.received_auth.append(auth)
        if body.get("model") == "echo-401":
            status, message = 401, f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"
        else:
            status, message = 500, "upstream exploded"
        raw = json.dumps({"error": {"message": message, "type": "server_error"}}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  # stdlib's name
        return


def routes_yaml(upstream_url: str, mock_url: str) -> str:
    failing = {"base_url": upstream_url, "api_key_env": PROVIDER_KEY_ENV}
    mock = {"name": "mock", "base_url": mock_url, "api_key_env": PROVIDER_KEY_ENV}
    routes = {
        "models": {
            "gpt-4o-mini": {
                "deployments": [{"name": "canary-500", "model": "fail-500", **failing}, mock]
            },
            "canary-echo": {
                "deployments": [{"name": "canary-401", "model": "echo-401", **failing}]
            },
            "mock-*": {"deployments": [mock]},
        }
    }
    return json.dumps(routes)  # JSON is YAML


@pytest.fixture(scope="module")
def canaries() -> Canaries:
    return Canaries()


@pytest.fixture(scope="module")
def canary_stack(
    kafka_bootstrap: str, canaries: Canaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    mock_port = free_port()
    routes = tmp_path_factory.mktemp("canary") / "routes.yaml"
    routes.write_text(
        routes_yaml(
            f"http://127.0.0.1:{upstream.server_address[1]}/v1",
            f"http://127.0.0.1:{mock_port}/v1",
        )
    )
    stack = Stack(
        ingress_port=free_port(),
        mock_port=mock_port,
        clickhouse_port=free_port(),
        clickhouse_data=STATE_DIR / "clickhouse-e2e-canary",
        routers=1,
        mock_latency_ms=5,
        log_dir=STATE_DIR / "logs" / "e2e-canary",
        extra_env={
            "TOLLWAY_AUTH": "keys",
            "TOLLWAY_ADMIN_KEY": canaries.admin_key,
            "TOLLWAY_ROUTES_FILE": str(routes),
            PROVIDER_KEY_ENV: canaries.provider_key,
        },
    )
    try:
        stack.start(kafka_bootstrap, timeout_s=90)
        yield stack
    finally:
        stack.stop()
        upstream.shutdown()
        upstream.server_close()


def drive(stack: Stack, canaries: Canaries) -> tuple[list[str], list[str]]:
    """Every kind of call with the canary key; returns (request ids, error bodies)."""
    admin = {"authorization": f"Bearer {canaries.admin_key}"}
    ids: list[str] = []
    errors: list[str] = []

    def keep(response: httpx.Response, *expected: int) -> httpx.Response:
        assert response.status_code in expected, (response.status_code, response.text)
        if response.status_code >= 400:
            errors.append(response.text)
        if rid := response.headers.get("x-tollway-request-id"):
            ids.append(rid)
        return response

    chat = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"say {canaries.probe}"}],
    }
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        keep(http.post("/admin/v1/teams", json={"id": TEAM}, headers=admin), 201, 409)
        created = keep(http.post("/admin/v1/keys", json={"team_id": TEAM}, headers=admin), 201)
        canaries.virtual_key = created.json()["key"]
        key = {"authorization": f"Bearer {canaries.virtual_key}"}

        served = keep(http.post("/v1/chat/completions", json=chat, headers=key), 200)
        assert served.headers["x-tollway-deployment"] == "mock"  # fell over from the 500
        streamed = keep(
            http.post("/v1/chat/completions", json={**chat, "stream": True}, headers=key), 200
        )
        assert "[DONE]" in streamed.text
        keep(
            http.post("/v1/chat/completions", json={**chat, "model": "canary-echo"}, headers=key),
            401,
            502,
            503,
        )
        accepted = keep(http.post("/v1/async/chat/completions", json=chat, headers=key), 202)
        request_id = accepted.json()["id"]
        deadline = time.monotonic() + 60
        while (
            http.get(f"/v1/async/requests/{request_id}", headers=key).json()["status"] == "queued"
        ):
            assert time.monotonic() < deadline, "the async request did not complete"
            time.sleep(0.2)
        lines = "".join(
            json.dumps(
                {
                    "custom_id": f"c{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": chat,
                }
            )
            + "\n"
            for i in range(3)
        )
        uploaded = keep(
            http.post(
                "/v1/files",
                files={"file": ("canary.jsonl", lines)},
                data={"purpose": "batch"},
                headers=key,
            ),
            200,
        )
        batch = keep(
            http.post(
                "/v1/batches",
                json={
                    "input_file_id": uploaded.json()["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
                headers=key,
            ),
            200,
        )
        while (state := http.get(f"/v1/batches/{batch.json()['id']}", headers=key).json())[
            "status"
        ] != "completed":
            assert time.monotonic() < deadline + 60, f"the batch did not complete: {state}"
            time.sleep(0.5)

        keep(http.post("/v1/chat/completions", content=b"{not json", headers=key), 400)
        keep(
            http.post("/v1/chat/completions", json={**chat, "model": "no-such-model"}, headers=key),
            400,
            404,
        )
        keep(http.post("/v1/chat/completions", json={**chat, "max_tokens": -5}, headers=key), 400)
        keep(http.get("/admin/v1/keys", headers=key), 401, 403)
        near_miss = canaries.virtual_key[:-1] + ("A" if canaries.virtual_key[-1] != "A" else "B")
        keep(http.get("/v1/models", headers={"authorization": f"Bearer {near_miss}"}), 401)
        keep(http.post(f"/admin/v1/keys/{created.json()['id']}/revoke", headers=admin), 200)
        time.sleep(1.5)  # revocation applies within 1 s (test_auth.py)
        keep(http.post("/v1/chat/completions", json=chat, headers=key), 401)
    return ids, errors


def _stored(clickhouse: Client, ids: list[str]) -> int:
    """How many of `ids` have their request row (0 while the loader has not migrated)."""
    try:
        rows = clickhouse.query(
            "SELECT uniqExact(request_id) FROM tollway.requests "
            "WHERE request_id IN {ids:Array(String)}",
            parameters={"ids": ids},
        ).result_rows
    except ClickHouseError:
        return 0
    return int(rows[0][0])


def files_holding(roots: list[Path], needles: dict[str, bytes]) -> list[str]:
    """'<secret name> in <path>' for every file under `roots` whose bytes hold a needle."""
    found: list[str] = []
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file()):
            try:
                data = path.read_bytes()
            except OSError:  # a file that vanished (segment deleted, tmp renamed) meanwhile
                continue
            found.extend(f"{name} in {path}" for name, needle in needles.items() if needle in data)
    return found


def test_no_canary_secret_reaches_logs_topics_clickhouse_or_error_bodies(
    canary_stack: Stack, canaries: Canaries
) -> None:
    ids, errors = drive(canary_stack, canaries)
    assert any(canaries.provider_key in auth for auth in Upstream.received_auth), (
        "the routers never sent the canary provider key upstream: the test proves nothing"
    )
    for body in errors:
        for name, secret in canaries.secrets().items():
            assert secret not in body, f"{name} in an error body: {body[:300]}"

    clickhouse = connect(f"http://127.0.0.1:{canary_stack.clickhouse_port}")
    deadline = time.monotonic() + 90
    while _stored(clickhouse, ids) < len(set(ids)):
        assert time.monotonic() < deadline, "the requests did not reach ClickHouse"
        time.sleep(1)
    tables = [
        row[0]
        for row in clickhouse.query(
            "SELECT name FROM system.tables WHERE database = 'tollway' AND engine NOT LIKE '%View'"
        ).result_rows
    ]
    assert {"requests", "attempts", "usage"} <= set(tables)
    for table in tables:
        for name, secret in canaries.secrets().items():
            hits = clickhouse.query(
                f"SELECT count() FROM tollway.`{table}` "  # a name from system.tables, not input
                "WHERE position(formatRowNoNewline('TSV', *), {s:String}) > 0",
                parameters={"s": secret},
            ).result_rows[0][0]
            assert hits == 0, f"{name} in ClickHouse table {table}"
    clickhouse.close()
    canary_stack.stop()  # every log written and closed; ClickHouse flushed

    kafka_dir = Path(os.environ.get("TOLLWAY_KAFKA_DIR", REPO_ROOT / ".tollway" / "kafka"))
    probe_files = files_holding([kafka_dir], {"probe": canaries.probe.encode()})
    assert probe_files, f"the probe is in no segment under {kafka_dir}: the search sees no topics"
    needles = {name: secret.encode() for name, secret in canaries.secrets().items()}
    roots = [canary_stack.log_dir, kafka_dir, canary_stack.clickhouse_data, STATE_DIR / "files"]
    assert files_holding(roots, needles) == []
