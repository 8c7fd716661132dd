"""What the admin API answers: teams, keys, tag policies and budgets as JSON objects. Pure.

A key object never carries the key's digest; the plain key appears only in the answer
to its creation (`created_key_object`). Money is an exact decimal string of USD.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

from schemas.records import BudgetState
from workers.budget.config import BudgetsConfig
from workers.tenancy.model import KeyRecord, Limits, TagPolicy, TeamRecord, WalletLimits

KeyStatus = Literal["active", "revoked", "expired"]


def key_status(key: KeyRecord, now_ms: int) -> KeyStatus:
    if key.revoked_at_ms is not None and key.revoked_at_ms <= now_ms:
        return "revoked"
    if key.expires_at_ms is not None and now_ms >= key.expires_at_ms:
        return "expired"
    return "active"


def _limits(limits: Limits) -> dict[str, int | None]:
    return {"rpm": limits.rpm, "tpm": limits.tpm, "max_concurrency": limits.max_concurrency}


def _wallet(wallet: WalletLimits) -> dict[str, int | None]:
    return {
        "max_input_bytes": wallet.max_input_bytes,
        "max_output_tokens": wallet.max_output_tokens,
        "max_batch_lines": wallet.max_batch_lines,
        "max_queued_requests": wallet.max_queued_requests,
    }


def team_object(team: TeamRecord, key_count: int) -> dict[str, Any]:
    return {
        "object": "team",
        "id": team.team_id,
        "name": team.name,
        "allowed_models": list(team.allowed_models),
        "limits": _limits(team.limits),
        "wallet": _wallet(team.wallet),
        "metadata": dict(team.metadata),
        "key_count": key_count,
        "created_at_ms": team.created_at_ms,
        "updated_at_ms": team.updated_at_ms,
    }


def key_object(key: KeyRecord, now_ms: int) -> dict[str, Any]:
    return {
        "object": "key",
        "id": key.key_id,
        "team_id": key.team_id,
        "name": key.name,
        "display_prefix": key.display_prefix,
        "status": key_status(key, now_ms),
        "tags": list(key.tags),
        "allowed_models": list(key.allowed_models),
        "limits": _limits(key.limits),
        "expires_at_ms": key.expires_at_ms,
        "revoked_at_ms": key.revoked_at_ms,
        "metadata": dict(key.metadata),
        "created_at_ms": key.created_at_ms,
    }


def created_key_object(key: KeyRecord, plain_key: str, now_ms: int) -> dict[str, Any]:
    """The one answer that shows the plain key."""
    return {**key_object(key, now_ms), "key": plain_key}


def policy_object(policy: TagPolicy) -> dict[str, Any]:
    return {
        "object": "tag_policy",
        "id": policy.tag,
        "tag": policy.tag,
        "allowed_models": list(policy.allowed_models),
        "updated_at_ms": policy.updated_at_ms,
    }


def deleted_object(kind: str, entity_id: str) -> dict[str, Any]:
    return {"object": kind, "id": entity_id, "deleted": True}


def list_object(data: Sequence[Mapping[str, Any]], *, has_more: bool = False) -> dict[str, Any]:
    return {"object": "list", "data": list(data), "has_more": has_more}


def _usd(nano_usd: int | None) -> str | None:
    return None if nano_usd is None else format(Decimal(nano_usd).scaleb(-9).normalize(), "f")


def budget_objects(
    config: BudgetsConfig, states: Mapping[str, BudgetState] | None
) -> list[dict[str, Any]]:
    """Every configured budget with the spend its latest state shows (null: no state yet,
    or the budget view is not running in this process)."""
    out: list[dict[str, Any]] = []
    for rule in config.budgets:
        state = None if states is None else states.get(rule.state_key)
        out.append(
            {
                "object": "budget",
                "scope": rule.scope,
                "window": rule.window,
                "limit_usd": str(rule.limit_usd),
                "enforcement": rule.enforcement,
                "downgrade_to": rule.downgrade_to,
                "spent_usd": None if state is None else _usd(state["spent_nano_usd"]),
                "remaining_usd": None if state is None else _usd(state["remaining_nano_usd"]),
                "status": None if state is None else state["status"],
                "state_updated_at_ms": None if state is None else state["updated_at_ms"],
            }
        )
    return out
