"""Which requests one router must own: the partition key of tollway.requests.*. Pure.

A router's reservations (`reservations.py`) bound a team's overspend only if
every in-flight call of that team is held in the SAME ledger. So a request of a
team with at least one HARD budget on a scope the team owns — `team:<team>`,
`key:<key>` (a key belongs to one team), `model:<team>/<model>` — is keyed by
its team id: Kafka's partitioner puts all of them on one partition, owned by
exactly one router of the group. Every other request keeps its request id as
the key (docs/decisions/0004: load spreads evenly). Soft and downgrade budgets
need no ownership (they never refuse), and `global` cannot be owned by one
partition: it is enforced from state only (docs/decisions/0009).
"""

from __future__ import annotations

from schemas.records import RequestEnvelope
from workers.budget.config import BudgetsConfig


class Ownership:
    """Partition keys of requests under one budgets config (looked up in O(1))."""

    def __init__(self, config: BudgetsConfig) -> None:
        teams: set[str] = set()
        keys: set[str] = set()
        for rule in config.budgets:
            if rule.enforcement != "hard":
                continue
            if rule.scope_type == "team":
                teams.add(rule.scope_id)
            elif rule.scope_type == "model":
                teams.add(rule.scope_id.split("/", 1)[0])
            elif rule.scope_type == "key":
                keys.add(rule.scope_id)
        self.teams = frozenset(teams)
        self.keys = frozenset(keys)

    def owned(self, team_id: str, key_id: str | None) -> bool:
        """Whether the request's team must be served by one router (a team-owned hard budget)."""
        return team_id in self.teams or (key_id is not None and key_id in self.keys)

    def partition_key(self, team_id: str, key_id: str | None, request_id: str) -> bytes:
        """The Kafka key of a request: its team id when owned, else its request id."""
        return (team_id if self.owned(team_id, key_id) else request_id).encode()

    def key_of(self, envelope: RequestEnvelope) -> bytes:
        """`partition_key` of an envelope (the ingress's `KafkaBus(key_of=...)`)."""
        return self.partition_key(envelope["team_id"], envelope["key_id"], envelope["request_id"])
