"""tollway.cache records and attempt.v3: codec round trips, limits, what a reader admits."""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas import codec, topics
from schemas.records import Attempt
from workers.cache.cache import ResponseCache
from workers.cache.kafka import from_record, to_record
from workers.cache.store import CachedAnswer, ExactStore

T0 = 1_700_000_000_000


class UnitEmbedder:
    """Embeds every text as the same unit vector (enough to test admission)."""

    name = "unit-test"
    dimensions = 4

    def embed(self, text: str) -> tuple[Any, bool]:
        return np.array([1, 0, 0, 0], dtype=np.float32), False


def entry(**overrides: Any) -> CachedAnswer:
    fields: dict[str, Any] = {
        "key": "team:a/abc",
        "scope": "team:a",
        "model": "gpt-4o-mini",
        "body": b'{"object":"chat.completion"}',
        "provider": "openai",
        "upstream_model": "gpt-4o-mini",
        "served_model": "gpt-4o-mini-2024-07-18",
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "cache_write_tokens": 0,
        },
        "created_at_ms": T0,
        "expires_at_ms": T0 + 60_000,
        "semantic_scope": "team:a/sem",
        "embedding": np.array([1, 0, 0, 0], dtype="<f4").tobytes(),
        "embedder": "unit-test",
        "semantic_guard": "aa:bb",
    }
    fields.update(overrides)
    return CachedAnswer(**fields)


def test_a_cache_entry_survives_the_topic() -> None:
    for answer in (entry(), entry(semantic_scope=None, embedding=None, embedder=None)):
        raw = codec.encode("cache_entry", to_record(answer))
        assert len(raw) < topics.CACHE_RECORD_MAX_BYTES
        assert from_record(codec.decode("cache_entry", raw)) == answer


def test_the_cache_topic_is_compacted_and_bounded() -> None:
    assert topics.CACHE in topics.ALL_TOPICS
    assert topics.CACHE.config["cleanup.policy"] == "compact,delete"
    assert int(topics.CACHE.config["max.message.bytes"]) == topics.CACHE_RECORD_MAX_BYTES


def test_an_attempt_v2_record_still_decodes_and_v3_carries_cache_hits() -> None:
    attempt: Attempt = {
        "request_id": "r",
        "attempt_id": "e.1",
        "attempt": 1,
        "team_id": "t",
        "key_id": None,
        "mode": "sync",
        "deployment": "cache",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "started_at_ms": T0,
        "latency_ms": 0.3,
        "outcome": "cache_hit",
        "http_status": 200,
        "error_type": None,
        "error_code": None,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "cache_write_tokens": 0,
        "router_id": "r-1",
    }
    assert codec.decode("attempt", codec.encode("attempt", attempt)) == attempt
    v2 = codec.REGISTRY.by_id(5)
    assert v2 is not None
    old = {**attempt, "outcome": "ok"}
    raw = v2.header + (v2.writer(old) if v2.writer else b"")
    assert codec.decode("attempt", raw) == old


def test_the_reader_admits_entries_with_their_vectors_and_drops_them_with_them() -> None:
    cache = ResponseCache(
        ExactStore(max_entries=1, max_bytes=10**6), embedder=UnitEmbedder(), threshold=0.9
    )
    assert cache.admit(entry(), T0)
    assert len(cache.index) == 1
    held = cache.store.peek("team:a/abc")
    assert held is not None
    assert held.embedding is None  # the vector lives in the index only
    assert held.index_bytes == 16
    assert cache.admit(entry(key="team:a/def"), T0)  # evicts the first (max 1 entry)
    assert len(cache.index) == 1
    assert "team:a/abc" not in cache.index.scopes["team:a/sem"]
    assert not cache.admit(entry(key="team:a/old", expires_at_ms=T0), T0)  # expired
    other_model = entry(key="team:a/x", embedder="another-model")
    assert cache.admit(other_model, T0)  # kept for exact hits, never compared semantically
    assert len(cache.index) == 0


def test_the_ingress_answers_the_cache_status_as_a_header() -> None:
    from ingress.app import result_response

    result: Any = {
        "request_id": "req_1",
        "attempts": 0,
        "deployment": "cache",
        "metadata": {"tollway.cache": "semantic-hit"},
        "body": b"{}",
        "http_status": 200,
    }
    assert result_response(result).headers["x-tollway-cache"] == "semantic-hit"
    result["metadata"] = {}
    assert "x-tollway-cache" not in result_response(result).headers
