"""Governance without HTTP: approved models (ingress/governance.py), wallet caps, request
tags and end users (ingress/request_tags.py), and the import rule of these pure modules."""

from __future__ import annotations

import sys
from typing import Final

import pytest

from ingress.governance import WalletPolicy, approves, check_model, refusing_policy
from ingress.request_tags import MAX_TAGS, merged_tags, parse_end_user, parse_tags
from schemas.errors import InvalidRequest, ModelNotAllowed, WalletLimitExceeded
from tests.unit.test_architecture import ALLOWED_THIRD_PARTY, FORBIDDEN, ROOT, _closure
from workers.tenancy.model import KeyRecord, TagPolicy, TeamRecord, WalletLimits

TEAM: Final = TeamRecord("acme", "Acme", allowed_models=("gpt-4o-mini", "gpt-4o", "mock-*"))
OPEN_TEAM: Final = TeamRecord("free", "Free")
KEY: Final = KeyRecord("key_1", "acme", "d" * 64, "tw-abcde", allowed_models=("gpt-4o-mini",))
ANY_KEY: Final = KeyRecord("key_2", "acme", "e" * 64, "tw-fghij")
POLICIES: Final = {
    "support-bot": TagPolicy("support-bot", ("gpt-4o-mini", "mock-cheap")),
    "nothing": TagPolicy("nothing", ()),
}


def _policy(tag: str) -> TagPolicy | None:
    return POLICIES.get(tag)


@pytest.mark.parametrize(
    ("allowed", "model", "expected"),
    [
        (("gpt-4o",), "gpt-4o", True),
        (("gpt-4o",), "gpt-4o-mini", False),  # exact names are exact
        (("gpt-4o*",), "gpt-4o-mini", True),
        (("mock-*",), "mock-", True),
        (("mock-*",), "mock", False),
        ((), "gpt-4o", False),
    ],
)
def test_approves(allowed: tuple[str, ...], model: str, expected: bool) -> None:
    assert approves(allowed, model) is expected


@pytest.mark.parametrize(
    ("model", "team", "key", "tags", "expected"),
    [
        ("gpt-4o-mini", TEAM, KEY, (), None),
        ("gpt-4.1", TEAM, KEY, (), "team"),
        ("gpt-4o", TEAM, KEY, (), "key"),
        ("gpt-4o", TEAM, ANY_KEY, (), None),  # a key without a list: the team's
        ("mock-x", TEAM, ANY_KEY, (), None),
        ("gpt-4.1", OPEN_TEAM, None, (), None),  # an empty team list: every model
        ("gpt-4o", TEAM, ANY_KEY, ("support-bot",), "tag:support-bot"),
        ("gpt-4o-mini", TEAM, ANY_KEY, ("support-bot", "unknown-tag"), None),
        ("gpt-4o-mini", TEAM, ANY_KEY, ("nothing", "support-bot"), "tag:nothing"),
        ("mock-cheap", TEAM, KEY, ("support-bot",), "key"),  # team, then key, then tags
        ("gpt-4o-mini", None, None, (), None),  # open mode: no records, no policy
    ],
)
def test_the_first_refusing_policy_is_named(
    model: str,
    team: TeamRecord | None,
    key: KeyRecord | None,
    tags: tuple[str, ...],
    expected: str | None,
) -> None:
    assert refusing_policy(model, team=team, key=key, tags=tags, tag_policy=_policy) == expected


def test_a_refusal_is_a_403_model_not_allowed_naming_the_policy() -> None:
    with pytest.raises(ModelNotAllowed) as caught:
        check_model("gpt-4o", team=TEAM, key=ANY_KEY, tags=("support-bot",), tag_policy=_policy)
    error = caught.value
    assert (error.http_status, error.code, error.error_type) == (
        403,
        "model_not_allowed",
        "permission_error",
    )
    assert error.policy == "tag:support-bot"
    assert error.param == "model"
    assert "`support-bot`" in error.message
    assert "policy: tag:support-bot" in error.message


def test_adding_tags_never_widens_what_a_request_may_use() -> None:
    models = ("gpt-4o-mini", "gpt-4o", "mock-cheap", "gpt-4.1")
    for model in models:
        base = refusing_policy(model, team=TEAM, key=ANY_KEY, tags=(), tag_policy=_policy)
        tagged = refusing_policy(
            model, team=TEAM, key=ANY_KEY, tags=("support-bot",), tag_policy=_policy
        )
        assert base is None or tagged is not None


DEFAULTS: Final = WalletLimits(max_input_bytes=1_000, max_output_tokens=100, max_batch_lines=10)


def test_a_teams_cap_overrides_the_gateway_default_field_by_field() -> None:
    wallet = WalletPolicy(WalletLimits(max_output_tokens=500), DEFAULTS)
    assert wallet.cap("max_output_tokens") == (500, "the team's limit")
    assert wallet.cap("max_input_bytes") == (1_000, "the gateway's default limit")
    assert wallet.cap("max_queued_requests") is None
    assert wallet.max_queued_requests is None


@pytest.mark.parametrize(
    ("call", "limit", "param"),
    [
        (lambda w: w.check_input_bytes(1_001), "max_input_bytes", None),
        (lambda w: w.check_output_tokens({"max_tokens": 101}), "max_output_tokens", "max_tokens"),
        (
            lambda w: w.check_output_tokens({"max_tokens": None, "max_completion_tokens": 101}),
            "max_output_tokens",
            "max_completion_tokens",
        ),
        (lambda w: w.check_batch_lines(11), "max_batch_lines", "input_file_id"),
    ],
)
def test_over_a_cap_is_a_400_naming_the_limit(call: object, limit: str, param: str | None) -> None:
    wallet = WalletPolicy(WalletLimits(), DEFAULTS)
    with pytest.raises(WalletLimitExceeded) as caught:
        call(wallet)  # type: ignore[operator]  # the table's lambdas
    error = caught.value
    assert (error.http_status, error.code) == (400, "wallet_limit_exceeded")
    assert (error.limit, error.param) == (limit, param)
    assert f"{limit}=" in error.message
    assert "gateway's default" in error.message


def test_at_a_cap_or_without_one_passes() -> None:
    capped = WalletPolicy(WalletLimits(), DEFAULTS)
    capped.check_input_bytes(1_000)
    capped.check_output_tokens({"max_tokens": 100, "max_completion_tokens": None})
    capped.check_batch_lines(10)
    free = WalletPolicy(WalletLimits(), WalletLimits())
    free.check_input_bytes(10**9)
    free.check_output_tokens({"max_tokens": 10**6})
    free.check_batch_lines(10**6)


def test_the_output_cap_is_written_only_into_a_request_naming_none() -> None:
    capped = WalletPolicy(WalletLimits(), DEFAULTS)
    assert capped.check_output_tokens({"max_tokens": None, "max_completion_tokens": None}) == 100
    assert capped.check_output_tokens({"max_tokens": 7, "max_completion_tokens": None}) is None
    free = WalletPolicy(WalletLimits(), WalletLimits())
    assert free.check_output_tokens({"max_tokens": None, "max_completion_tokens": None}) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ()),
        ("", ()),
        ("b, a,,b ", ("a", "b")),
        ("support-bot", ("support-bot",)),
        ("env:prod,v1.2_x", ("env:prod", "v1.2_x")),
    ],
)
def test_tags_are_parsed_sorted_and_deduplicated(
    raw: str | None, expected: tuple[str, ...]
) -> None:
    assert parse_tags(raw, param="x-tollway-tags") == expected


@pytest.mark.parametrize(
    "raw",
    [
        "' OR 1=1 --",
        "a;b",
        "a b",
        "\x00",
        "ünïcode",
        "-leading",
        "x" * 65,
        ",".join(f"t{i}" for i in range(MAX_TAGS + 1)),
        "a," * 2_000,
    ],
)
def test_malformed_tags_are_a_400_that_names_the_header_not_the_value(raw: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_tags(raw, param="x-tollway-tags")
    assert caught.value.param == "x-tollway-tags"
    assert raw not in caught.value.message


def test_merged_tags_are_capped_in_total() -> None:
    assert merged_tags(("a",), ("b", "a"), ()) == ("a", "b")
    with pytest.raises(InvalidRequest):
        merged_tags([f"k{i}" for i in range(10)], [f"h{i}" for i in range(10)])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("user-42", "user-42"), ("ana@example.com", "ana@example.com"), ("Zoë", "Zoë")],
)
def test_end_users_that_pass(raw: str | None, expected: str | None) -> None:
    assert parse_end_user(raw, param="user") == expected


@pytest.mark.parametrize("raw", ["", "   ", "a\x00b", "line\nbreak", "x" * 257])
def test_end_users_that_are_refused(raw: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_end_user(raw, param="x-tollway-end-user")
    assert caught.value.param == "x-tollway-end-user"


PURE_MODULES: Final = (
    "ingress/credentials.py",
    "ingress/governance.py",
    "ingress/request_tags.py",
    "ingress/queue_limit.py",
)


@pytest.mark.parametrize("relative", PURE_MODULES)
def test_the_policy_modules_are_pure(relative: str) -> None:
    reached = _closure(ROOT / relative)
    assert reached & FORBIDDEN == set(), f"{relative} reaches {sorted(reached & FORBIDDEN)}"
    third_party = {r for r in reached if r not in sys.stdlib_module_names}
    assert third_party <= ALLOWED_THIRD_PARTY, f"{relative} reaches {sorted(third_party)}"
