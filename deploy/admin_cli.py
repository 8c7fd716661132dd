"""`tollway keys|teams|budgets ...`: the admin API (ingress/admin_api.py) from a shell.

    tollway teams create ID [--name N] [--model M ...] [--rpm N] [--tpm N] [--concurrency N]
    tollway teams list
    tollway teams delete ID
    tollway keys create --team ID [--name N] [--tag T ...] [--model M ...] [--rpm N] [--tpm N]
                        [--concurrency N] [--expires-in 30d]   prints the key ONCE
    tollway keys list [--team ID] [--status active|revoked|expired|all]
    tollway keys revoke KEY_ID
    tollway budgets list

Every command talks to an ingress over HTTP: `--url` (default `$TOLLWAY_URL` or
http://127.0.0.1:8000) with the admin credential from `--admin-key` or, better (a flag
shows in the process list), `$TOLLWAY_ADMIN_KEY`. `--json` prints the API's answer as is.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

_DURATION = re.compile(r"^(\d+)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class CliError(Exception):
    """Printed as `error: ...`, exit status 1."""


def duration_s(text: str) -> int:
    """`90s`, `15m`, `12h`, `30d` -> seconds."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError("a duration like 90s, 15m, 12h or 30d")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def _client(args: argparse.Namespace) -> httpx.Client:
    key = args.admin_key or os.environ.get("TOLLWAY_ADMIN_KEY")
    if not key:
        raise CliError("set TOLLWAY_ADMIN_KEY (or pass --admin-key) to use the admin API")
    headers = {"authorization": f"Bearer {key}", "x-tollway-actor": _actor()}
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30)


def _actor() -> str:
    """The local user name for the audit log, if it is a plain token."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        return "cli"
    return name if re.fullmatch(r"[A-Za-z0-9._@+-]{1,64}", name) else "cli"


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the ingress at {client.base_url} ({exc})") from exc
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise CliError(f"{response.status_code}: {message}")
    return response.json()


def _limits(args: argparse.Namespace) -> dict[str, int | None]:
    return {"rpm": args.rpm, "tpm": args.tpm, "max_concurrency": args.concurrency}


def _table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def _out(args: argparse.Namespace, answer: Any, text: str) -> None:
    if args.json:
        sys.stdout.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(text + "\n")


def _limit_text(limits: dict[str, int | None]) -> str:
    parts = [f"{k}={v}" for k, v in limits.items() if v is not None]
    return ",".join(parts) or "-"


# --- teams ---------------------------------------------------------------------------------


def _teams_create(args: argparse.Namespace, client: httpx.Client) -> None:
    body = {
        "id": args.id,
        "name": args.name or "",
        "allowed_models": args.model,
        "limits": _limits(args),
    }
    team = _call(client, "POST", "/admin/v1/teams", json=body)
    _out(args, team, f"created team {team['id']}")


def _teams_list(args: argparse.Namespace, client: httpx.Client) -> None:
    teams = _call(client, "GET", "/admin/v1/teams")
    rows = [
        (
            t["id"],
            t["name"],
            t["key_count"],
            ",".join(t["allowed_models"]) or "*",
            _limit_text(t["limits"]),
        )
        for t in teams["data"]
    ]
    _out(args, teams, _table(rows, ("ID", "NAME", "KEYS", "MODELS", "LIMITS")))


def _teams_delete(args: argparse.Namespace, client: httpx.Client) -> None:
    answer = _call(client, "DELETE", f"/admin/v1/teams/{_segment(args.id)}")
    _out(args, answer, f"deleted team {args.id}")


# --- keys ----------------------------------------------------------------------------------


def _keys_create(args: argparse.Namespace, client: httpx.Client) -> None:
    body: dict[str, Any] = {
        "team_id": args.team,
        "name": args.name or "",
        "tags": args.tag,
        "allowed_models": args.model,
        "limits": _limits(args),
    }
    if args.expires_in is not None:
        body["expires_at_ms"] = (int(time.time()) + args.expires_in) * 1000
    key = _call(client, "POST", "/admin/v1/keys", json=body)
    if args.json:
        _out(args, key, "")
        return
    sys.stdout.write(key["key"] + "\n")
    sys.stderr.write(
        f"created {key['id']} for team {key['team_id']}: the key above is shown once, "
        "store it now (Tollway keeps only its digest)\n"
    )


def _keys_list(args: argparse.Namespace, client: httpx.Client) -> None:
    params: dict[str, str] = {"status": args.status, "limit": "1000"}
    if args.team:
        params["team_id"] = args.team
    keys = _call(client, "GET", "/admin/v1/keys", params=params)
    rows = [
        (
            k["id"],
            k["team_id"],
            k["display_prefix"] + "...",
            k["status"],
            k["name"],
            ",".join(k["tags"]) or "-",
            _limit_text(k["limits"]),
        )
        for k in keys["data"]
    ]
    text = _table(rows, ("ID", "TEAM", "KEY", "STATUS", "NAME", "TAGS", "LIMITS"))
    if keys.get("has_more"):
        text += "\n(more keys: narrow with --team or --status)"
    _out(args, keys, text)


def _keys_revoke(args: argparse.Namespace, client: httpx.Client) -> None:
    key = _call(client, "POST", f"/admin/v1/keys/{_segment(args.key_id)}/revoke")
    _out(args, key, f"revoked {key['id']} ({key['display_prefix']}...)")


# --- budgets -------------------------------------------------------------------------------


def _budgets_list(args: argparse.Namespace, client: httpx.Client) -> None:
    budgets = _call(client, "GET", "/admin/v1/budgets")
    rows = [
        (
            b["scope"],
            b["window"],
            b["enforcement"],
            b["limit_usd"],
            b["spent_usd"],
            b["remaining_usd"],
            b["status"],
        )
        for b in budgets["data"]
    ]
    header = ("SCOPE", "WINDOW", "ENFORCEMENT", "LIMIT_USD", "SPENT_USD", "LEFT_USD", "STATUS")
    text = _table(rows, header) if rows else "no budgets configured (TOLLWAY_BUDGETS_FILE)"
    _out(args, budgets, text)


def _segment(text: str) -> str:
    """An id as one path segment: anything but a plain token is refused here already."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text):
        raise CliError("not a valid id")
    return text


def _run(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            args.action(args, client)
    except CliError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("TOLLWAY_URL", "http://127.0.0.1:8000"), help="ingress"
    )
    parser.add_argument("--admin-key", default=None, help="default: $TOLLWAY_ADMIN_KEY")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", default=[], help="allowed model (repeat)")
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    parser.add_argument("--concurrency", type=int, default=None, help="calls in flight")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `teams`, `keys` and `budgets` on the `tollway` parser."""
    teams = sub.add_parser("teams", help="create, list and delete teams (admin API)")
    teams_actions = teams.add_subparsers(dest="teams_command", required=True)
    create = teams_actions.add_parser("create", help="create a team")
    create.add_argument("id")
    create.add_argument("--name")
    _limit_flags(create)
    create.set_defaults(action=_teams_create)
    teams_actions.add_parser("list", help="list teams").set_defaults(action=_teams_list)
    delete = teams_actions.add_parser("delete", help="delete a team without keys")
    delete.add_argument("id")
    delete.set_defaults(action=_teams_delete)

    keys = sub.add_parser("keys", help="create, list and revoke virtual keys (admin API)")
    keys_actions = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_actions.add_parser("create", help="create a key (printed once)")
    create.add_argument("--team", required=True)
    create.add_argument("--name")
    create.add_argument("--tag", action="append", default=[], help="tag (repeat)")
    create.add_argument("--expires-in", type=duration_s, default=None, help="e.g. 30d")
    _limit_flags(create)
    create.set_defaults(action=_keys_create)
    listing = keys_actions.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--team")
    listing.add_argument("--status", choices=("all", "active", "revoked", "expired"), default="all")
    listing.set_defaults(action=_keys_list)
    revoke = keys_actions.add_parser("revoke", help="revoke a key now")
    revoke.add_argument("key_id")
    revoke.set_defaults(action=_keys_revoke)

    budgets = sub.add_parser("budgets", help="budgets and their spend (admin API)")
    budgets_actions = budgets.add_subparsers(dest="budgets_command", required=True)
    budgets_actions.add_parser("list", help="list budgets").set_defaults(action=_budgets_list)

    for group in (teams_actions, keys_actions, budgets_actions):
        for parser in group.choices.values():
            _common(parser)
            parser.set_defaults(func=_run)
