"""analytics/queries.py: the named queries are a public contract; pin them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from analytics import queries as q

PINNED = [
    "spend_by_team", "spend_by_key", "spend_by_model", "spend_by_provider", "spend_by_tag",
    "spend_by_team_by_day", "daily_trend", "top_spenders", "cost_per_1k_requests",
    "latency_by_deployment", "call_latency_by_deployment", "reliability", "cache_savings",
    "budget_burn_down", "budget_events",
]  # fmt: skip
_PLACEHOLDER = re.compile(r"\{(\w+):([^}]+)\}")


def test_the_named_queries_are_pinned() -> None:
    assert list(q.QUERIES) == PINNED


@pytest.mark.parametrize("query", q.QUERIES.values(), ids=lambda query: query.name)
def test_declared_parameters_are_exactly_the_placeholders(query: q.NamedQuery[Any]) -> None:
    placeholders = {name: kind.replace(" ", "") for name, kind in _PLACEHOLDER.findall(query.sql)}
    assert placeholders == {k: v.replace(" ", "") for k, v in query.params.items()}
    assert "{db}." in query.sql
    assert query.render("tw").count("{db}") == 0
    assert query.description
    assert getattr(query.row, "_fields", None), "rows are NamedTuples"


@pytest.mark.parametrize("query", q.QUERIES.values(), ids=lambda query: query.name)
def test_docs_describe_every_named_query(query: q.NamedQuery[Any]) -> None:
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "analytics-schema.md").read_text()
    assert f"`{query.name}`" in docs
    for field in query.row._fields:  # type: ignore[attr-defined]  # checked NamedTuple above
        assert field in docs, f"{query.name}.{field} is not documented"


class FakeClient:
    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def query(self, sql: str, parameters: dict[str, Any], settings: dict[str, Any]) -> Any:
        self.calls.append((sql, parameters, settings))
        return type("Result", (), {"result_rows": self.rows})()


def test_run_checks_parameters_runs_readonly_and_types_rows() -> None:
    fake = FakeClient([("d1", 3, [1.0, float("nan"), 3.0], [float("nan")] * 3)])
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    rows = q.run(fake, q.LATENCY_BY_DEPLOYMENT, "tw", start=start, end=end, team="")  # type: ignore[arg-type]
    assert rows == [q.LatencyRow("d1", 3, 1.0, None, 3.0, None, None, None)]
    sql, params, settings = fake.calls[0]
    assert "FROM tw.requests" in sql
    assert params == {"start": start, "end": end, "team": ""}
    assert settings == {"readonly": 1}
    with pytest.raises(q.QueryParameterError, match=r"missing \['team'\], unknown \['teem'\]"):
        q.run(fake, q.SPEND_BY_TEAM, start=start, end=end, teem="x")  # type: ignore[arg-type]


def test_naive_datetimes_from_the_driver_are_utc() -> None:
    naive = datetime(2026, 1, 1, 12, 0)  # noqa: DTZ001  # what the driver returns for UTC columns
    fake = FakeClient([(naive, "team", "t", "30d", 80, 1, 2)])
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    rows = q.run(fake, q.BUDGET_EVENTS, start=start, end=end, scope_id="")  # type: ignore[arg-type]
    assert rows[0].occurred_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
