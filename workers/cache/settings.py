"""Response cache settings (env prefix `TOLLWAY_CACHE_`), parsed once and frozen.

Read by every router. Off by default: a cache changes what a repeated request gets (the
same answer again), so an operator turns it on knowingly (`TOLLWAY_CACHE_ENABLED=true`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import CACHE_RECORD_MAX_BYTES
from workers.cache.canonical import CachePolicy

_DAY_S = 86_400
DEFAULT_THRESHOLD = 0.90
"""Chosen from the labelled evaluation set (docs/decisions/0017)."""


class CacheSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TOLLWAY_CACHE_", frozen=True, extra="ignore")

    enabled: bool = Field(
        default=False,
        description="Answer repeated requests from the cache (exact, then semantic); "
        "loads the embedding model into every router (~90 MB, 0.3 s).",
    )
    ttl_s: int = Field(
        default=3_600,
        ge=1,
        le=7 * _DAY_S,
        description="How long an answer is served after it was stored (per entry; at most "
        "the tollway.cache topic's 7-day retention).",
    )
    max_entries: int = Field(default=100_000, ge=1, description="Entries held per router.")
    max_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1024,
        description="Memory held per router by entries: bodies, vectors and bookkeeping.",
    )
    max_entry_bytes: int = Field(
        default=256 * 1024,
        ge=1,
        le=CACHE_RECORD_MAX_BYTES - 64 * 1024,
        description="Larger answers are not cached (a tollway.cache record must stay under "
        "the topic's max.message.bytes with the embedding and ids beside the body).",
    )
    shared: bool = Field(
        default=True,
        description="Publish answers to tollway.cache and read every router's from it; "
        "false: each router caches alone.",
    )
    semantic: bool = Field(
        default=True,
        description="Also match paraphrases (cosine similarity of prompt embeddings); "
        "false: exact matches only.",
    )
    semantic_threshold: float = Field(
        default=DEFAULT_THRESHOLD,
        gt=0,
        le=1,
        description="Least cosine similarity of a semantic hit (docs/decisions/0017).",
    )
    semantic_max_temperature: float = Field(
        default=0.3,
        ge=0,
        le=2,
        description="Semantic matching only for requests at or below this temperature "
        "(absent = 1.0); exact matching applies to every temperature.",
    )
    semantic_allow_tools: bool = Field(
        default=False, description="Semantic matching also for requests with tools."
    )
    semantic_text: Literal["system_and_last_user", "last_user"] = Field(
        default="system_and_last_user",
        description="What is embedded: the system prompt(s) and the last user turn, or the "
        "last user turn only (the system prompt then has to match exactly).",
    )
    embedder: str = Field(
        default="local",
        description="`local`: all-MiniLM-L6-v2 in-process (onnxruntime). `deployment:<model>` "
        "(a provider embeddings deployment of the routes) is reserved: not implemented yet.",
    )
    share_groups: dict[str, str] = Field(
        default_factory=dict,
        description='JSON {"team": "group"}: teams of one group share their cache entries; '
        "every other team has its own.",
    )
    opted_out_keys: frozenset[str] = Field(
        default_factory=frozenset, description="JSON list of key ids never cached."
    )
    ivf_min_entries: int = Field(
        default=8_192,
        ge=16,
        description="A semantic scope with this many entries is partitioned (inverted "
        "file) instead of scanned whole: bench/cache_bench.py.",
    )
    ivf_lists: int = Field(default=256, ge=1, description="Partitions of a large scope.")
    ivf_probes: int = Field(
        default=8, ge=1, description="Partitions a lookup scans (more: slower, finds more)."
    )
    purge_interval_s: float = Field(
        default=30.0, gt=0, description="How often expired entries are dropped from memory."
    )

    @field_validator("embedder")
    @classmethod
    def _known_embedder(cls, value: str) -> str:
        if value == "local":
            return value
        if value.startswith("deployment:"):
            raise ValueError(
                "TOLLWAY_CACHE_EMBEDDER=deployment:<model> is not implemented yet; use `local`"
            )
        raise ValueError(f"unknown embedder {value!r}: `local`")

    def policy(self) -> CachePolicy:
        return CachePolicy(
            ttl_s=self.ttl_s,
            semantic=self.semantic,
            semantic_threshold=self.semantic_threshold,
            semantic_max_temperature=self.semantic_max_temperature,
            semantic_allow_tools=self.semantic_allow_tools,
            semantic_text=self.semantic_text,
            share_groups=dict(self.share_groups),
            opted_out_keys=self.opted_out_keys,
            max_entry_bytes=self.max_entry_bytes,
        )
