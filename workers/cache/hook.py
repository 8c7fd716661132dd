"""The router's use of the cache: before the plan, look up; after a success, store.

`Executor.execute` (workers/router/execution.py) calls `before` once it has the
request and, on a hit, `answer` instead of any provider call; after a provider
answered, `after` stores the answer (here, and on tollway.cache through `publish`)
and marks the result `tollway.cache = miss`. Embeddings requests never come here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from schemas.records import RequestEnvelope, Result, StreamChunk
from schemas.routes import Deployment, RoutesConfig
from workers.cache.answers import hit_attempt, hit_result, replay_chunks
from workers.cache.cache import Lookup, ResponseCache
from workers.cache.canonical import CACHE_STATUS_KEY, CachePolicy, decide
from workers.cache.store import CachedAnswer
from workers.providers.base import ProviderReply

log = logging.getLogger("tollway.cache")

Publish = Callable[[CachedAnswer], Awaitable[None]]


class RouterCache:
    """One router's cache hook. `clock_ms` is wall time (entries expire by it)."""

    def __init__(
        self,
        cache: ResponseCache,
        policy: CachePolicy,
        routes: RoutesConfig,
        *,
        clock_ms: Callable[[], int],
        publish: Publish | None = None,
    ) -> None:
        self.cache = cache
        self.policy = policy
        self.routes = routes
        self.clock_ms = clock_ms
        self.publish = publish

    async def before(
        self,
        envelope: RequestEnvelope,
        request: dict[str, Any],
        execution_id: str,
        router_id: str,
        emit: Callable[[StreamChunk], None] | None,
    ) -> Lookup:
        """Look the request up; on a hit `Lookup.served` holds its Result and Attempt
        (and a streamed request's chunks were handed to `emit`)."""
        t0, started_ms = time.perf_counter(), self.clock_ms()
        model = self.routes.aliased(
            envelope["model"], team_id=envelope["team_id"], key_id=envelope["key_id"]
        )
        decision = decide(
            request,
            team_id=envelope["team_id"],
            key_id=envelope["key_id"],
            model=model,
            metadata=envelope["metadata"],
            policy=self.policy,
        )
        lookup = self.cache.exact(decision, started_ms)
        if lookup.answer is None and self.cache.needs_vector(lookup):
            assert decision.semantic_text is not None
            # ~10 ms of numpy that mostly releases the GIL: off the event loop
            embedded = await asyncio.to_thread(self.cache.embed, decision.semantic_text)
            self.cache.semantic(lookup, embedded, self.clock_ms())
        answer, kind = lookup.answer, lookup.kind
        if answer is None or kind is None:
            return lookup
        if emit is not None and request.get("stream"):
            options = request.get("stream_options") or {}
            chunks = replay_chunks(
                answer.body, answer, include_usage=bool(options.get("include_usage"))
            )
            for seq, data in enumerate(chunks):
                emit(
                    {
                        "request_id": envelope["request_id"],
                        "execution_id": execution_id,
                        "seq": seq,
                        "data": data,
                        "cache": kind if seq == 0 else None,  # the ingress's header
                    }
                )
        attempt = hit_attempt(
            envelope,
            answer,
            execution_id=execution_id,
            router_id=router_id,
            started_ms=started_ms,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )
        result = hit_result(
            envelope, answer, status=kind, execution_id=execution_id, now_ms=self.clock_ms()
        )
        lookup.served = (result, [attempt])
        return lookup

    async def after(
        self, lookup: Lookup, result: Result, route: Deployment, reply: ProviderReply
    ) -> Result:
        """Store a successful answer; the result marked as a cache miss."""
        result = {**result, "metadata": {**result["metadata"], CACHE_STATUS_KEY: "miss"}}
        decision = lookup.decision
        if (
            not decision.write
            or result["status"] != "succeeded"
            or len(reply.body) > self.policy.max_entry_bytes
        ):
            return result
        now = self.clock_ms()
        vector = lookup.vector
        embedder = self.cache.embedder
        answer = CachedAnswer(
            key=decision.key,
            scope=decision.scope,
            model=decision.model,
            body=reply.body,
            provider=route.provider,
            upstream_model=route.model or decision.model,
            served_model=reply.served_model,
            usage=reply.usage.copy(),
            created_at_ms=now,
            expires_at_ms=now + self.policy.ttl_s * 1000,
            semantic_scope=decision.semantic_scope if vector is not None else None,
            embedding=vector.astype(np.dtype("<f4")).tobytes() if vector is not None else None,
            embedder=embedder.name if vector is not None and embedder is not None else None,
            semantic_guard=decision.semantic_guard if vector is not None else None,
        )
        self.cache.admit(answer, now)
        if self.publish is not None:
            try:
                await self.publish(answer)
            except Exception:  # the cache is an optimisation: never fail the request for it
                log.exception("publishing cache entry %s failed", answer.key)
        return result
