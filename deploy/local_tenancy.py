"""The local stack's tenancy: a pepper, team `default` and one virtual key, made once.

`tollway up` (deploy/stack.py) runs the ingress with `TOLLWAY_AUTH=keys`, so a client
needs a key from the first request. This module prepares, under the state directory:

    key-pepper                  the pepper of key digests (workers/tenancy/pepper_file.py)
    default-key                 mode 0600: the plain key of team `default`, `tw-...`
    tenancy-bootstrap.yaml      team `default` and that key, by `key_env` (no secret in it)

Each file is created with O_EXCL (owner-only from the first byte, never readable by
another user) and never replaced: the key stays valid across restarts, and an operator
may edit the bootstrap file (GitOps-style, workers/tenancy/bootstrap.py) or revoke the
key through the admin API (`tollway keys revoke`). The ingress applies the bootstrap
file at start (the file names the variable `BOOTSTRAP_KEY_ENV`, which only the
ingress process is given), so the key authenticates as soon as the ingress is ready.

Set `TOLLWAY_AUTH=open` to skip all of this (development only: no key is checked).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from workers.tenancy.keys import PEPPER_SETTING, is_importable_key, new_plain_key
from workers.tenancy.pepper_file import FILE_NAME as PEPPER_FILE_NAME
from workers.tenancy.pepper_file import ensure_pepper_file

KEY_FILE_NAME: Final = "default-key"
BOOTSTRAP_FILE_NAME: Final = "tenancy-bootstrap.yaml"
BOOTSTRAP_KEY_ENV: Final = "TOLLWAY_LOCAL_DEFAULT_KEY"
BOOTSTRAP_SETTING: Final = "TOLLWAY_TENANCY_BOOTSTRAP_FILE"
AUTH_SETTING: Final = "TOLLWAY_AUTH"

_BOOTSTRAP: Final = f"""\
# Tollway tenancy bootstrap (workers/tenancy/bootstrap.py), generated once by `tollway up`.
# Applied by the ingress at every start as upserts: add teams, keys (by key_env or
# key_digest, never a plain key) and tag policies here, then restart; or use the admin
# API / `tollway teams|keys`. The key below is read from {BOOTSTRAP_KEY_ENV}, which
# `tollway up` sets from {KEY_FILE_NAME} (mode 0600, next to this file).
version: 1
teams:
  - id: default
    name: Default team (tollway up)
keys:
  - team_id: default
    name: tollway up default key
    key_env: {BOOTSTRAP_KEY_ENV}
"""


class LocalTenancyError(RuntimeError):
    """A state file is broken; the message names the file, never its content."""


@dataclass(frozen=True, slots=True)
class LocalAuth:
    """What the stack's processes get: `env` for all, `ingress_env` for the ingress only."""

    mode: str
    env: dict[str, str]
    ingress_env: dict[str, str]
    api_key: str | None = None
    """The plain key of team `default` (keys mode), to print and to hand to clients."""
    key_file: Path | None = None


def _create_private(path: Path, text: str) -> bool:
    """Write `text` to a new owner-only file; False (nothing written) if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return True


def ensure_key_file(path: Path) -> str:
    """The plain key in `path`, creating the file (0600) with a new key if it is missing."""
    _create_private(path, new_plain_key() + "\n")
    key = path.read_text("ascii").strip()
    if not is_importable_key(key):
        raise LocalTenancyError(f"{path} does not hold a Tollway key; delete it to make a new one")
    return key


def local_auth(state_dir: Path, environ: Mapping[str, str]) -> LocalAuth:
    """The auth settings of a local stack (module docstring); `environ` = the stack's env."""
    mode = environ.get(AUTH_SETTING) or "keys"
    if mode != "keys":
        return LocalAuth(mode, {AUTH_SETTING: mode}, {})
    env = {AUTH_SETTING: "keys"}
    env[PEPPER_SETTING] = environ.get(PEPPER_SETTING) or ensure_pepper_file(
        state_dir / PEPPER_FILE_NAME
    )
    key_file = state_dir / KEY_FILE_NAME
    key = ensure_key_file(key_file)
    bootstrap = environ.get(BOOTSTRAP_SETTING)
    if bootstrap is None:
        path = state_dir / BOOTSTRAP_FILE_NAME
        _create_private(path, _BOOTSTRAP)
        bootstrap = str(path)
    ingress_env = {BOOTSTRAP_SETTING: bootstrap, BOOTSTRAP_KEY_ENV: key}
    return LocalAuth("keys", env, ingress_env, key, key_file)


def auth_summary(auth: LocalAuth | None) -> str:
    """One line for `tollway up`'s banner: where the key is, or that no key is checked."""
    if auth is None or auth.api_key is None:
        return "auth: OPEN (TOLLWAY_AUTH=open): no API key is checked; development only"
    return (
        f"api key: {auth.api_key} (team default; kept in {auth.key_file}, mode 0600; "
        "revoke with `tollway keys revoke`)"
    )
