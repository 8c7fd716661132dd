"""workers/cache/canonical.py: exact keys (stable and sensitive), scopes, who may use the cache."""

from __future__ import annotations

from typing import Any, Final

import pytest

from workers.cache.canonical import (
    CACHE_CONTROL_KEY,
    CachePolicy,
    cache_control_metadata,
    canonical_request,
    decide,
    exact_key,
    semantic_split,
)

POLICY: Final = CachePolicy()
QUESTION: Final = "What is the capital of France?"
BASE: Final[dict[str, Any]] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": QUESTION},
    ],
    "temperature": 0,
    "max_tokens": 50,
}


def key(request: dict[str, Any], model: str = "gpt-4o-mini", scope: str = "team:a") -> str:
    return exact_key(request, model, scope)


def test_the_key_is_a_scope_and_a_sha256() -> None:
    scope, digest = key(BASE).split("/")
    assert scope == "team:a"
    assert len(digest) == 64
    assert int(digest, 16) >= 0


@pytest.mark.parametrize(
    "same",
    [
        dict(reversed(list(BASE.items()))),  # field order
        {**BASE, "temperature": 0.0},  # 0 == 0.0
        {**BASE, "user": "u-123"},
        {**BASE, "stream": True, "stream_options": {"include_usage": True}},
        {**BASE, "metadata": {"app": "web"}},
        {**BASE, "store": True, "service_tier": "auto", "prompt_cache_key": "k"},
        {**BASE, "safety_identifier": "s"},
        {
            **BASE,
            "messages": [
                BASE["messages"][0],
                {
                    "role": "user",
                    "content": [{"type": "text", "text": BASE["messages"][1]["content"]}],
                },
            ],
        },
        {**BASE, "model": "an-alias-of-it"},  # the routed model counts, not the name asked
    ],
)
def test_the_key_ignores_what_does_not_change_the_answer(same: dict[str, Any]) -> None:
    assert key(same) == key(BASE)


@pytest.mark.parametrize(
    "other",
    [
        {**BASE, "temperature": 0.7},
        {**BASE, "max_tokens": 51},
        {**BASE, "top_p": 0.5},
        {**BASE, "seed": 7},
        {**BASE, "stop": ["\n"]},
        {**BASE, "n": 2},
        {**BASE, "response_format": {"type": "json_object"}},
        {**BASE, "tools": [{"type": "function", "function": {"name": "f"}}]},
        {**BASE, "logprobs": True},
        {**BASE, "messages": [BASE["messages"][1]]},  # no system prompt
        {
            **BASE,
            "messages": [BASE["messages"][0], {"role": "user", "content": "Capital of Spain?"}],
        },
        {**BASE, "messages": [*BASE["messages"], {"role": "assistant", "content": "Paris."}]},
    ],
)
def test_the_key_changes_with_everything_that_changes_the_answer(other: dict[str, Any]) -> None:
    assert key(other) != key(BASE)


def test_the_key_changes_with_the_routed_model_and_the_scope() -> None:
    assert key(BASE, model="gpt-4o") != key(BASE)
    assert key(BASE, scope="team:b").split("/")[1] == key(BASE).split("/")[1]
    assert key(BASE, scope="team:b") != key(BASE)


def test_canonical_bytes_are_sorted_compact_json() -> None:
    raw = canonical_request({"b": 1.0, "a": [2.0, 2.5], "messages": []}, "m")
    assert raw == b'{"a":[2,2.5],"b":1,"messages":[],"model":"m"}'


def test_teams_are_isolated_unless_a_policy_shares() -> None:
    a = decide(BASE, team_id="a", key_id=None, model="m", metadata={}, policy=POLICY)
    b = decide(BASE, team_id="b", key_id=None, model="m", metadata={}, policy=POLICY)
    assert a.key != b.key
    assert a.semantic_scope != b.semantic_scope
    shared = CachePolicy(share_groups={"a": "research", "b": "research"})
    a2 = decide(BASE, team_id="a", key_id=None, model="m", metadata={}, policy=shared)
    b2 = decide(BASE, team_id="b", key_id=None, model="m", metadata={}, policy=shared)
    assert a2.key == b2.key
    assert a2.scope == "group:research"
    c2 = decide(BASE, team_id="c", key_id=None, model="m", metadata={}, policy=shared)
    assert c2.key != a2.key


@pytest.mark.parametrize(
    ("header", "metadata"),
    [
        (None, {}),
        ("", {}),
        ("max-age=60", {}),
        ("no-cache", {CACHE_CONTROL_KEY: "no-cache"}),
        ("No-Store", {CACHE_CONTROL_KEY: "no-store"}),
        ("no-cache, no-store", {CACHE_CONTROL_KEY: "no-store"}),
        ("private, no-cache=foo", {CACHE_CONTROL_KEY: "no-cache"}),
    ],
)
def test_cache_control_header_becomes_metadata(header: str | None, metadata: object) -> None:
    assert cache_control_metadata(header) == metadata


def test_no_store_no_cache_and_opted_out_keys() -> None:
    def d(metadata: dict[str, str], key_id: str | None = None, **policy: Any) -> Any:
        return decide(
            BASE,
            team_id="a",
            key_id=key_id,
            model="m",
            metadata=metadata,
            policy=CachePolicy(**policy),
        )

    assert (d({}).read, d({}).write) == (True, True)
    assert (d({CACHE_CONTROL_KEY: "no-cache"}).read, d({CACHE_CONTROL_KEY: "no-cache"}).write) == (
        False,
        True,
    )
    no_store = d({CACHE_CONTROL_KEY: "no-store"})
    assert (no_store.read, no_store.write) == (False, False)
    opted = d({}, key_id="k1", opted_out_keys=frozenset({"k1"}))
    assert (opted.read, opted.write) == (False, False)
    assert d({}, key_id="k2", opted_out_keys=frozenset({"k1"})).read


def test_live_search_is_never_cached() -> None:
    request = {**BASE, "web_search_options": {}}
    decision = decide(request, team_id="a", key_id=None, model="m", metadata={}, policy=POLICY)
    assert (decision.read, decision.write) == (False, False)


@pytest.mark.parametrize(
    ("change", "semantic"),
    [
        ({}, True),
        ({"temperature": 0.3}, True),
        ({"temperature": 0.31}, False),
        ({"temperature": None}, False),  # absent: the providers' default 1.0
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, False),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this?"},
                            {"type": "image_url", "image_url": {"url": "data:,"}},
                        ],
                    }
                ]
            },
            False,
        ),
        ({"messages": [{"role": "assistant", "content": "hello"}]}, False),  # no user turn
    ],
)
def test_semantic_eligibility(change: dict[str, Any], semantic: bool) -> None:
    request = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    decision = decide(request, team_id="a", key_id=None, model="m", metadata={}, policy=POLICY)
    assert (decision.semantic_scope is not None) is semantic
    assert decision.read  # exact matching stays on


def test_tools_may_be_allowed_for_semantic_matching() -> None:
    request = {**BASE, "tools": [{"type": "function", "function": {"name": "f"}}]}
    policy = CachePolicy(semantic_allow_tools=True)
    decision = decide(request, team_id="a", key_id=None, model="m", metadata={}, policy=policy)
    assert decision.semantic_scope is not None


def test_semantic_text_and_exact_context() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate 'cat' to German."},
    ]
    split = semantic_split(messages, "system_and_last_user")
    assert split is not None
    assert split[0] == "Be brief.\nTranslate 'cat' to German."
    assert split[1] == [messages[1], messages[2]]
    only_user = semantic_split(messages, "last_user")
    assert only_user is not None
    assert only_user[0] == "Translate 'cat' to German."
    assert only_user[1] == messages[:3]


def test_the_semantic_scope_holds_everything_but_the_embedded_text() -> None:
    def scope(request: dict[str, Any]) -> str | None:
        return decide(
            request, team_id="a", key_id=None, model="m", metadata={}, policy=POLICY
        ).semantic_scope

    paraphrase = {
        **BASE,
        "messages": [BASE["messages"][0], {"role": "user", "content": "France's capital city?"}],
    }
    assert scope(paraphrase) == scope(BASE)
    assert scope({**BASE, "max_tokens": 10}) != scope(BASE)
    turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    longer = {**BASE, "messages": [BASE["messages"][0], *turns, BASE["messages"][1]]}
    assert scope(longer) != scope(BASE)
