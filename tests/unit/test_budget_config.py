"""workers/budget/config.py: the budgets file."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from workers.budget.config import (
    BudgetsConfigError,
    format_usd,
    load_budgets,
    parse_budgets,
    scope_string,
    state_key,
)

FILE = """
- {scope: "team:acme", window: 24h, limit_usd: "50.00", enforcement: hard}
- {scope: "key:key_123", window: 1h, limit_usd: 2, enforcement: soft}
- {scope: "model:acme/gpt-4o", window: mtd, limit_usd: 0.1,
   enforcement: downgrade, downgrade_to: gpt-4o-mini}
- {scope: global, window: 30d, limit_usd: "10000"}
"""


def test_a_plain_list_parses() -> None:
    config = parse_budgets(FILE)
    assert [r.scope for r in config.budgets] == [
        "team:acme",
        "key:key_123",
        "model:acme/gpt-4o",
        "global",
    ]
    assert config.unpriced == "fail_closed"


@pytest.mark.parametrize(
    ("scope", "window", "scope_type", "scope_id", "limit_nano", "key", "enforcement"),
    [
        ("team:acme", "24h", "team", "acme", 50_000_000_000, "team:acme:24h", "hard"),
        ("key:key_123", "1h", "key", "key_123", 2_000_000_000, "key:key_123:1h", "soft"),
        (
            "model:acme/gpt-4o",
            "mtd",
            "model",
            "acme/gpt-4o",
            100_000_000,
            "model:acme/gpt-4o:mtd",
            "downgrade",
        ),
        ("global", "30d", "global", "*", 10_000_000_000_000, "global:*:30d", "hard"),
    ],
)
def test_rule_properties(
    scope: str,
    window: str,
    scope_type: str,
    scope_id: str,
    limit_nano: int,
    key: str,
    enforcement: str,
) -> None:
    rule = parse_budgets(FILE).rule(scope, window)
    assert rule is not None
    assert (rule.scope_type, rule.scope_id, rule.limit_nano_usd) == (
        scope_type,
        scope_id,
        limit_nano,
    )
    assert rule.state_key == key == state_key(rule.scope_type, rule.scope_id, window)
    assert rule.enforcement == enforcement
    assert scope_string(rule.scope_type, rule.scope_id) == scope


def test_limits_are_exact_decimals_quoted_or_not() -> None:
    config = parse_budgets('- {scope: global, window: 1h, limit_usd: 0.1}\n'
                           '- {scope: global, window: 24h, limit_usd: "0.30"}')  # fmt: skip
    assert config.budgets[0].limit_usd == Decimal("0.1")
    assert config.budgets[1].limit_usd == Decimal("0.30")
    assert config.budgets[1].limit_nano_usd == 300_000_000


def test_the_mapping_form_carries_the_unpriced_policy() -> None:
    config = parse_budgets(
        "unpriced: ignore\nbudgets:\n  - {scope: 'team:a', window: 7d, limit_usd: 1}\n"
    )
    assert config.unpriced == "ignore"
    assert config.rule("team:a", "7d") is not None
    assert config.rule("team:a", "1h") is None
    assert config.scopes == frozenset({"team:a"})
    assert list(config.rules_for("team:a")) == list(config.budgets)


@pytest.mark.parametrize("text", ["", "[]", "budgets: []"])
def test_no_budgets(text: str) -> None:
    assert parse_budgets(text).budgets == ()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- {scope: 'tenant:a', window: 1h, limit_usd: 1}", "0.scope"),
        ("- {scope: 'team:', window: 1h, limit_usd: 1}", "0.scope"),
        ("- {scope: 'model:acme', window: 1h, limit_usd: 1}", "0.scope"),
        ("- {scope: 'team:a', window: 2h, limit_usd: 1}", "0.window"),
        ("- {scope: 'team:a', window: 1h, limit_usd: 0}", "0.limit_usd"),
        ("- {scope: 'team:a', window: 1h, limit_usd: -3}", "0.limit_usd"),
        ("- {scope: 'team:a', window: 1h, limit_usd: .nan}", "0.limit_usd"),
        ("- {scope: 'team:a', window: 1h, limit_usd: '0.0000000001'}", "nano-USD"),
        ("- {scope: 'team:a', window: 1h, limit_usd: 1, enforcement: downgrade}", "downgrade_to"),
        ("- {scope: 'team:a', window: 1h, limit_usd: 1, downgrade_to: m}", "downgrade_to"),
        ("- {scope: 'team:a', window: 1h, limit_usd: 1, enforcement: block}", "enforcement"),
        ("- {scope: 'team:a', window: 1h, limit_usd: 1, colour: red}", "colour"),
        (
            "- {scope: 'team:a', window: 1h, limit_usd: 1}\n"
            "- {scope: 'team:a', window: 1h, limit_usd: 2}",
            "two budgets for team:a over 1h",
        ),
        ("unpriced: maybe\nbudgets: []", "unpriced"),
        ("- {scope: [", "not valid YAML"),
    ],
)
def test_invalid_files_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(BudgetsConfigError, match=match):
        parse_budgets(text, "budgets.yaml")


def test_load_from_a_file_or_none(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(FILE, "utf-8")
    assert len(load_budgets(path).budgets) == 4
    assert load_budgets(None).budgets == ()
    path.write_text("- {scope: x}", "utf-8")
    with pytest.raises(BudgetsConfigError, match=str(path)):
        load_budgets(path)


@pytest.mark.parametrize(
    ("nano", "text"),
    [
        (0, "$0.00"),
        (5_000_000_000, "$5.00"),
        (1_234_567_891, "$1.234567891"),
        (123_000, "$0.000123"),
        (10_000_000, "$0.01"),
        (10, "$0.00000001"),
    ],
)
def test_format_usd(nano: int, text: str) -> None:
    assert format_usd(nano) == text
