"""Governance applied to one authenticated caller: the policies of ingress/governance.py,
the queue cap of ingress/queue_limit.py, and the request's end user and tags
(ingress/request_tags.py), put together for the handlers. No I/O.

Order at admission (`Ingress.submit`): input size -> parse -> model approved (after the
caller's aliases) -> output-token cap -> queue cap (async) -> budgets -> publish. Each
refusal happens before anything is published.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ingress.auth import Principal
from ingress.governance import WalletPolicy, check_model, refusing_policy
from ingress.queue_limit import TeamQueues
from ingress.request_tags import (
    END_USER_HEADER,
    END_USER_METADATA_KEY,
    TAGS_HEADER,
    TAGS_METADATA_KEY,
    merged_tags,
    parse_end_user,
    parse_tags,
)
from schemas.routes import RoutesConfig
from workers.tenancy.model import TagPolicy, WalletLimits


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What the request's headers add to its principal (validated)."""

    end_user: str | None = None
    tags: tuple[str, ...] = ()

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RequestContext:
        return cls(
            end_user=parse_end_user(headers.get(END_USER_HEADER), param=END_USER_HEADER),
            tags=parse_tags(headers.get(TAGS_HEADER), param=TAGS_HEADER),
        )


class Gatekeeper:
    """The governance decisions of one ingress replica, over its config views."""

    def __init__(
        self,
        *,
        routes: RoutesConfig,
        tag_policy: Callable[[str], TagPolicy | None],
        wallet_defaults: WalletLimits,
        queues: TeamQueues,
    ) -> None:
        self.routes = routes
        self.tag_policy = tag_policy
        self.wallet_defaults = wallet_defaults
        self.queues = queues

    def wallet(self, principal: Principal) -> WalletPolicy:
        team = principal.team.wallet if principal.team is not None else WalletLimits()
        return WalletPolicy(team, self.wallet_defaults)

    def check_model(self, principal: Principal, model: str, tags: Iterable[str]) -> None:
        """403 `model_not_allowed` unless every policy approves the model `model` routes to."""
        routed = self.routes.aliased(model, team_id=principal.team_id, key_id=principal.key_id)
        check_model(
            routed,
            team=principal.team,
            key=principal.key,
            tags=tags,
            tag_policy=self.tag_policy,
        )

    def visible_models(self, principal: Principal, names: Sequence[str]) -> list[str]:
        """The public model names this caller may use (GET /v1/models)."""
        return [
            name
            for name in names
            if refusing_policy(
                self.routes.aliased(name, team_id=principal.team_id, key_id=principal.key_id),
                team=principal.team,
                key=principal.key,
                tags=principal.caller.tags,
                tag_policy=self.tag_policy,
            )
            is None
        ]

    @staticmethod
    def tags_for(
        principal: Principal, context: RequestContext, metadata: Mapping[str, str]
    ) -> tuple[str, ...]:
        """The key's tags, the header's and the body's `metadata.tags`, merged."""
        body_tags = parse_tags(metadata.get(TAGS_METADATA_KEY), param="metadata.tags")
        return merged_tags(principal.caller.tags, context.tags, body_tags)

    @staticmethod
    def end_user_for(context: RequestContext, body_user: str | None) -> str | None:
        """The header's end user, else the body's `user` field (checked the same way)."""
        if context.end_user is not None:
            return context.end_user
        return parse_end_user(body_user, param="user")

    @staticmethod
    def annotate(
        metadata: dict[str, str], tags: tuple[str, ...], end_user: str | None
    ) -> dict[str, str]:
        """`metadata` with the merged tags and the end user in their keys."""
        out = dict(metadata)
        if tags:
            out[TAGS_METADATA_KEY] = ",".join(tags)
        else:
            out.pop(TAGS_METADATA_KEY, None)
        if end_user is not None:
            out[END_USER_METADATA_KEY] = end_user
        return out

    def check_async_queue(self, principal: Principal, now_ms: int) -> None:
        limit = self.wallet(principal).max_queued_requests
        if limit is not None:
            self.queues.check_async(principal.team_id, limit, now_ms)

    def async_accepted(self, principal: Principal, request_id: str, now_ms: int) -> None:
        if self.wallet(principal).max_queued_requests is not None:
            self.queues.accepted(principal.team_id, request_id, now_ms)

    def async_released(self, principal: Principal, request_id: str) -> None:
        """Undo `async_accepted` for a request whose publish failed (nothing was queued)."""
        if self.wallet(principal).max_queued_requests is not None:
            self.queues.released(principal.team_id, request_id)

    def check_batch(self, principal: Principal, lines: int, now_ms: int) -> None:
        """Batch create: 400 over `max_batch_lines`, 429 over `max_queued_requests`."""
        wallet = self.wallet(principal)
        wallet.check_batch_lines(lines)
        limit = wallet.max_queued_requests
        if limit is not None:
            self.queues.check_batch(principal.team_id, limit, lines, now_ms)

    def batch_created(self, principal: Principal) -> None:
        self.queues.batch_created(principal.team_id)
