"""`tollway up`'s webhooks file: created once, owner-only, a valid secret, never replaced."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from deploy.stack import Stack
from workers.callbacks.settings import load_webhooks
from workers.callbacks.signing import secret_key
from workers.callbacks.webhooks_file import ensure_webhooks_file


def test_the_file_is_created_once_with_mode_0600_and_a_valid_secret(tmp_path: Path) -> None:
    path = tmp_path / "state" / "webhooks.yaml"
    assert ensure_webhooks_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    team = load_webhooks(path).team("default")
    assert team is not None
    assert team.endpoints == ()
    (secret,) = team.secrets
    assert len(secret_key(secret.get_secret_value())) >= 32

    first = path.read_bytes()
    assert not ensure_webhooks_file(path)  # an operator's file (and its secret) is kept
    assert path.read_bytes() == first


def test_each_stack_gets_its_own_secret(tmp_path: Path) -> None:
    one, two = tmp_path / "a.yaml", tmp_path / "b.yaml"
    ensure_webhooks_file(one)
    ensure_webhooks_file(two)
    assert one.read_text() != two.read_text()


def test_tollway_up_points_the_dispatcher_at_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOLLWAY_CALLBACKS_WEBHOOKS_FILE", raising=False)
    stack = Stack(webhooks_file=tmp_path / "webhooks.yaml", log_dir=tmp_path / "logs")
    callbacks = next(c for c in stack.plan("127.0.0.1:1") if c.name == "callbacks")
    assert callbacks.env["TOLLWAY_CALLBACKS_WEBHOOKS_FILE"] == str(tmp_path / "webhooks.yaml")
    assert (tmp_path / "webhooks.yaml").is_file()
    assert "TOLLWAY_CALLBACKS_ALLOW_NETWORKS" not in callbacks.env  # never on by default


def test_a_configured_webhooks_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_CALLBACKS_WEBHOOKS_FILE", "/etc/tollway/webhooks.yaml")
    stack = Stack(webhooks_file=tmp_path / "webhooks.yaml", log_dir=tmp_path / "logs")
    callbacks = next(c for c in stack.plan("127.0.0.1:1") if c.name == "callbacks")
    assert callbacks.env["TOLLWAY_CALLBACKS_WEBHOOKS_FILE"] == "/etc/tollway/webhooks.yaml"
    assert not (tmp_path / "webhooks.yaml").exists()
