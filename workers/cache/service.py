"""Wiring of one router's response cache: settings -> embedder, cache, hook, topic sync."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from schemas.routes import RoutesConfig
from schemas.settings import KafkaSettings
from workers.cache.cache import Embedder, ResponseCache
from workers.cache.hook import RouterCache
from workers.cache.kafka import KafkaCacheSync
from workers.cache.semantic import SemanticIndex
from workers.cache.settings import CacheSettings
from workers.cache.store import ExactStore

log = logging.getLogger("tollway.cache")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def load_embedder(settings: CacheSettings) -> Embedder | None:
    """The local MiniLM model when semantic matching is on (loaded once, ~0.3 s)."""
    if not settings.semantic:
        return None
    from workers.cache.minilm import MiniLM

    return MiniLM.load()


def build_response_cache(settings: CacheSettings, embedder: Embedder | None) -> ResponseCache:
    dims = embedder.dimensions if embedder is not None else 0
    return ResponseCache(
        ExactStore(max_entries=settings.max_entries, max_bytes=settings.max_bytes),
        embedder=embedder,
        threshold=settings.semantic_threshold,
        index=SemanticIndex(
            dims,
            ivf_min_entries=settings.ivf_min_entries,
            lists=settings.ivf_lists,
            probes=settings.ivf_probes,
        ),
    )


class CacheService:
    """The hook the executor calls and, when shared, the tollway.cache sync behind it."""

    def __init__(
        self,
        kafka: KafkaSettings,
        routes: RoutesConfig,
        settings: CacheSettings,
        *,
        embedder: Embedder | None = None,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.settings = settings
        self.cache = build_response_cache(settings, embedder)
        self.sync = (
            KafkaCacheSync(
                kafka, self.cache, clock_ms=clock_ms, purge_interval_s=settings.purge_interval_s
            )
            if settings.shared
            else None
        )
        self.hook = RouterCache(
            self.cache,
            settings.policy(),
            routes,
            clock_ms=clock_ms,
            publish=self.sync.publish if self.sync is not None else None,
        )

    async def start(self) -> None:
        if self.sync is not None:
            await self.sync.start()
        log.info(
            "response cache on: ttl %ss, %d entries / %d bytes, semantic %s (threshold %.2f)",
            self.settings.ttl_s,
            self.settings.max_entries,
            self.settings.max_bytes,
            "on" if self.cache.embedder is not None else "off",
            self.settings.semantic_threshold,
        )

    async def stop(self) -> None:
        if self.sync is not None:
            await self.sync.stop()


def build_cache_service(
    kafka: KafkaSettings, routes: RoutesConfig, settings: CacheSettings | None = None
) -> CacheService | None:
    """The router's cache from `TOLLWAY_CACHE_*`; None when the cache is off."""
    settings = settings or CacheSettings()
    if not settings.enabled:
        return None
    return CacheService(kafka, routes, settings, embedder=load_embedder(settings))
