"""Governance at admission: approved models and denial-of-wallet caps. Pure.

Approved models (`check_model`): the model a request routes to, after the caller's
aliases (schemas/routes.py `RoutesConfig.aliased`), must be approved by every policy
that applies, checked in this order and named in the 403 `model_not_allowed`:

    team      TeamRecord.allowed_models   (empty = every model in the routing table)
    key       KeyRecord.allowed_models    (empty = whatever the team allows)
    tag:<t>   TagPolicy.allowed_models    for each tag of the key and of the request

An entry ending in `*` approves every model that starts with what precedes it (the
routing table's own prefix patterns). A tag without a policy restricts nothing.

Denial-of-wallet (`WalletPolicy`): a team's `WalletLimits` override the gateway-wide
defaults (ingress/settings.py, `TOLLWAY_INGRESS_WALLET_*`) field by field; `None` in both
means no cap. A request over a cap is a 400 `wallet_limit_exceeded` that names the cap,
its value and whose it is. The queue cap is enforced by ingress/queue_limit.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NoReturn

from schemas.errors import ModelNotAllowed, WalletLimitExceeded
from workers.tenancy.model import KeyRecord, TagPolicy, TeamRecord, WalletLimits

WalletField = Literal[
    "max_input_bytes", "max_output_tokens", "max_batch_lines", "max_queued_requests"
]


def approves(allowed: Iterable[str], model: str) -> bool:
    """True when `model` is named in `allowed` or matches one of its `prefix*` patterns."""
    return any(
        model.startswith(entry[:-1]) if entry.endswith("*") else model == entry for entry in allowed
    )


def refusing_policy(
    model: str,
    *,
    team: TeamRecord | None,
    key: KeyRecord | None,
    tags: Iterable[str],
    tag_policy: Callable[[str], TagPolicy | None],
) -> str | None:
    """The first policy that does not approve `model` (`team`, `key`, `tag:<t>`), or None."""
    if team is not None and team.allowed_models and not approves(team.allowed_models, model):
        return "team"
    if key is not None and key.allowed_models and not approves(key.allowed_models, model):
        return "key"
    for tag in sorted(set(tags)):
        policy = tag_policy(tag)
        if policy is not None and not approves(policy.allowed_models, model):
            return f"tag:{tag}"
    return None


def check_model(
    model: str,
    *,
    team: TeamRecord | None,
    key: KeyRecord | None,
    tags: Iterable[str],
    tag_policy: Callable[[str], TagPolicy | None],
) -> None:
    """Raise `ModelNotAllowed` (403) naming the first policy that refuses `model`."""
    policy = refusing_policy(model, team=team, key=key, tags=tags, tag_policy=tag_policy)
    if policy is None:
        return
    whose = {
        "team": f"the approved models of team `{team.team_id if team else ''}`",
        "key": f"the approved models of key `{key.key_id if key else ''}`",
    }.get(policy, f"the approved models of tag `{policy.removeprefix('tag:')}`")
    raise ModelNotAllowed(
        f"The model `{model}` is not allowed by {whose} (policy: {policy}).",
        policy=policy,
        param="model",
    )


@dataclass(frozen=True, slots=True)
class WalletPolicy:
    """A team's denial-of-wallet caps over the gateway's defaults."""

    team: WalletLimits
    defaults: WalletLimits

    def cap(self, name: WalletField) -> tuple[int, str] | None:
        """(value, whose) of a cap: the team's if set, else the gateway default, else None."""
        own: int | None = getattr(self.team, name)
        if own is not None:
            return own, "the team's limit"
        default: int | None = getattr(self.defaults, name)
        return None if default is None else (default, "the gateway's default limit")

    def _refuse(
        self, name: WalletField, value: int, cap: tuple[int, str], what: str, param: str | None
    ) -> NoReturn:
        limit, whose = cap
        raise WalletLimitExceeded(
            f"{what} is {value}, over {whose} {name}={limit}.", limit=name, param=param
        )

    def check_input_bytes(self, size_bytes: int) -> None:
        cap = self.cap("max_input_bytes")
        if cap is not None and size_bytes > cap[0]:
            self._refuse("max_input_bytes", size_bytes, cap, "The request body in bytes", None)

    def check_output_tokens(self, requested: Mapping[str, int | None]) -> int | None:
        """`requested`: the request's output caps by field (`max_tokens`,
        `max_completion_tokens`; None = absent).

        Refuses a cap over the limit. Returns the limit to write into a request that names
        no cap at all (else the provider's own maximum, often far larger, would apply), or
        None when the request is capped already or there is no limit."""
        cap = self.cap("max_output_tokens")
        if cap is None:
            return None
        for field, value in requested.items():
            if value is not None and value > cap[0]:
                self._refuse("max_output_tokens", value, cap, f"The requested {field}", field)
        return cap[0] if all(value is None for value in requested.values()) else None

    def check_batch_lines(self, lines: int) -> None:
        cap = self.cap("max_batch_lines")
        if cap is not None and lines > cap[0]:
            self._refuse(
                "max_batch_lines", lines, cap, "The input file's number of lines", "input_file_id"
            )

    @property
    def max_queued_requests(self) -> int | None:
        cap = self.cap("max_queued_requests")
        return None if cap is None else cap[0]
