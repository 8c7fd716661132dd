"""`tollway teams|keys|budgets` (deploy/admin_cli.py) against the admin API in process."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
from typing import Final

import httpx
import pytest

from deploy import admin_cli
from deploy.cli import main
from ingress.admin_api import AdminApi
from ingress.admin_auth import AdminKey
from ingress.app import build_app
from ingress.bus import MemoryBus
from ingress.settings import IngressSettings
from schemas.routes import default_routes
from workers.budget.config import parse_budgets
from workers.tenancy.admin import MemoryConfigWriter, TenancyAdmin
from workers.tenancy.keys import Pepper
from workers.tenancy.store import TenancyStore

KEY: Final = "unit-test-admin-key-0123456789abcdef"
PEPPER: Final = Pepper("unit-test-pepper-0123456789abcdef-xyz")


async def _never(_: object) -> None:
    return None


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[TenancyStore]:
    """The admin API in process; the CLI's HTTP client is pointed at it."""
    store = TenancyStore()
    admin = TenancyAdmin(store, MemoryConfigWriter(), PEPPER)
    budgets = parse_budgets('- {scope: "team:acme", window: 24h, limit_usd: "5.00"}')
    api = AdminApi(store, admin, AdminKey(KEY), budgets=budgets)
    app = build_app(
        IngressSettings(id_secret="unit-test", auth="open"),
        default_routes({}),
        MemoryBus(_never),
        extra_routes=[lambda _: api.routes()],
    )
    loop = asyncio.new_event_loop()
    inner = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")

    def handle(request: httpx.Request) -> httpx.Response:
        """The CLI's synchronous request, answered by the ASGI app on a loop of its own."""
        answer = loop.run_until_complete(
            inner.request(
                request.method, str(request.url), headers=request.headers, content=request.read()
            )
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def connect(args: argparse.Namespace) -> httpx.Client:
        headers = {"authorization": f"Bearer {args.admin_key or ''}"}
        return httpx.Client(
            transport=httpx.MockTransport(handle), base_url="http://admin", headers=headers
        )

    monkeypatch.setattr(admin_cli, "_client", connect)
    yield store
    loop.run_until_complete(inner.aclose())
    loop.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--admin-key", KEY])
    out, err = capsys.readouterr()
    return code, out, err


def test_teams_and_keys_round_trip(store: TenancyStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "teams", "create", "acme", "--rpm", "60", "--model", "m1")[0] == 0
    code, out, _ = run(capsys, "teams", "list")
    assert code == 0
    assert "acme" in out
    assert "rpm=60" in out
    code, out, err = run(
        capsys, "keys", "create", "--team", "acme", "--tag", "bot", "--expires-in", "30d"
    )
    assert code == 0
    plain = out.strip()
    assert plain.startswith("tw-")
    assert "shown once" in err
    record = store.key_by_digest(PEPPER.digest(plain))
    assert record is not None
    assert record.expires_at_ms is not None
    code, out, _ = run(capsys, "keys", "list", "--team", "acme")
    assert record.key_id in out
    assert plain not in out
    assert "active" in out
    code, out, _ = run(capsys, "keys", "revoke", record.key_id)
    assert code == 0
    assert "revoked" in out
    revoked = store.key(record.key_id)
    assert revoked is not None
    assert revoked.revoked_at_ms is not None
    code, _, err = run(capsys, "teams", "delete", "acme")
    assert code == 1
    assert "409" in err


def test_budgets_list(store: TenancyStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "budgets", "list")
    assert code == 0
    assert "team:acme" in out
    assert "5.00" in out


def test_a_wrong_admin_key_is_reported(
    store: TenancyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["teams", "list", "--admin-key", "not-the-admin-key-at-all-000"])
    assert code == 1
    assert "401" in capsys.readouterr().err


def test_no_admin_key_anywhere_is_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOLLWAY_ADMIN_KEY", raising=False)
    assert main(["teams", "list"]) == 1
    assert "TOLLWAY_ADMIN_KEY" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000)]
)
def test_durations(text: str, seconds: int) -> None:
    assert admin_cli.duration_s(text) == seconds


@pytest.mark.parametrize("text", ["0d", "1w", "d", "-1d", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        admin_cli.duration_s(text)
