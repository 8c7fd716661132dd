"""The side-by-side benchmark's pure parts: statistics, ladder rules, /proc parsing, report.

bench/ is not a package (its scripts run as `python bench/x.py`), so its directory is put
on sys.path here, as the scripts do for each other.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import compare_render
import litellm_proxy
import openloop
import proctree
from compare_stats import (
    LoadStep,
    Target,
    added_latency_ms,
    cpu_s_per_request,
    evaluate,
    ladder,
    merge_loads,
    percentile_ms,
    ratio,
    step_held,
    sustained,
)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 0.5, 0.0),
        ([7.0], 0.99, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 0.75, 3.0),
        ([float(i) for i in range(1, 101)], 0.99, 99.0),
        ([float(i) for i in range(1, 101)], 1.0, 100.0),
        ([float(i) for i in range(1, 101)], 0.0, 1.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile_ms(values, q) == expected


def part(
    latencies: list[float], *, issued: int | None = None, errors: dict[str, int] | None = None,
    window_s: float = 10.0, late: float = 0.0, ttfts: list[float] | None = None,
) -> dict[str, Any]:  # fmt: skip
    kinds = errors or {}
    n_err = sum(kinds.values())
    n = issued if issued is not None else len(latencies) + n_err
    return {
        "issued": n,
        "all_issued": n + 5,
        "ok": len(latencies),
        "errors": n_err,
        "error_kinds": kinds,
        "window_s": window_s,
        "latencies_ms": sorted(latencies),
        "ttfts_ms": sorted(ttfts or []),
        "late_ms_p99": late,
        "cpu_s": 0.5,
        "stream": ttfts is not None,
    }


def step(
    rate: float, *, ok: int, errors: int = 0, p99_ms: float = 60.0, window_s: float = 10.0
) -> LoadStep:
    """A merged step of `ok` answers whose slowest 2 % took `p99_ms` (the rest 50 ms)."""
    slow = max(1, ok // 50) if ok else 0
    latencies = [50.0] * (ok - slow) + [p99_ms] * slow
    kinds = {"timeout": errors} if errors else None
    return merge_loads(rate, [part(latencies, errors=kinds, window_s=window_s)])


def test_merge_loads_adds_counts_and_merges_latencies() -> None:
    merged = merge_loads(
        100.0,
        [
            part([10.0, 30.0], errors={"http_500": 1}, late=2.0),
            part([20.0, 40.0], errors={"http_500": 2, "timeout": 1}, late=5.0),
        ],
    )
    assert (merged.issued, merged.all_issued, merged.ok, merged.errors) == (8, 18, 4, 4)
    assert merged.error_kinds == {"http_500": 3, "timeout": 1}
    assert merged.latency == {"p50_ms": 20.0, "p95_ms": 40.0, "p99_ms": 40.0}
    assert merged.ttft is None
    assert merged.late_ms_p99 == 5.0
    assert merged.generator_cpu_s == 1.0
    assert merged.throughput_rps == pytest.approx(0.4)
    assert merged.error_ratio == pytest.approx(0.5)


def test_merge_loads_of_a_stream_has_ttft() -> None:
    merged = merge_loads(10.0, [part([100.0], ttfts=[30.0]), part([90.0], ttfts=[10.0])])
    assert merged.ttft == {"p50_ms": 10.0, "p95_ms": 30.0, "p99_ms": 30.0}


def test_merge_loads_needs_output() -> None:
    with pytest.raises(ValueError, match="no generator output"):
        merge_loads(1.0, [])


@pytest.mark.parametrize(
    ("ok", "errors", "p99_ms", "held"),
    [
        (990, 10, 900.0, True),  # exactly 1 % errors holds
        (989, 11, 900.0, False),  # above 1 %
        (1000, 0, 1000.0, True),  # p99 of exactly 1 s holds
        (1000, 0, 1000.5, False),
        (899, 0, 60.0, False),  # only 89.9 % of the rate was offered
        (900, 0, 60.0, True),  # 90 % offered
    ],
)
def test_step_held(ok: int, errors: int, p99_ms: float, held: bool) -> None:
    # 100/s over 10 s: 1,000 requests when the whole rate was offered
    assert step_held(step(100.0, ok=ok, errors=errors, p99_ms=p99_ms)) is held


def test_a_step_with_nothing_issued_never_holds() -> None:
    assert step_held(step(100.0, ok=0)) is False


def test_sustained_is_the_last_step_before_the_first_break() -> None:
    steps = [
        step(25.0, ok=250),
        step(50.0, ok=500),
        step(100.0, ok=1000, p99_ms=1500.0),  # broke
        step(200.0, ok=2000),  # a lucky step after the break does not count
    ]
    best = sustained(steps)
    assert best is not None
    assert best.rate_rps == 50.0
    assert sustained(steps[2:]) is None


def test_ladder_doubles_up_to_the_cap() -> None:
    assert ladder(25, 400) == [25, 50, 100, 200, 400]
    assert ladder(25, 399) == [25, 50, 100, 200]
    with pytest.raises(ValueError, match="start > 0"):
        ladder(0, 10)


def test_added_latency_is_system_minus_direct() -> None:
    system = {"p50_ms": 60.5, "p95_ms": 80.0, "p99_ms": 120.0}
    direct = {"p50_ms": 51.0, "p95_ms": 55.0, "p99_ms": 58.25}
    assert added_latency_ms(system, direct) == {"p50_ms": 9.5, "p95_ms": 25.0, "p99_ms": 61.75}
    assert added_latency_ms(None, direct) is None


def test_cpu_per_request_only_for_processes_seen_twice() -> None:
    before = {"ingress": 10.0, "router": 20.0, "gone": 1.0}
    after = {"ingress": 12.0, "router": 21.0, "new": 5.0}
    assert cpu_s_per_request(before, after, 1000) == {"ingress": 0.002, "router": 0.001}
    assert cpu_s_per_request({"a": 1.0}, {"a": 2.0}, 0) == {"a": 1.0}


def test_ratio() -> None:
    assert ratio(450.0, 30.0) == 15.0
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 3.0) is None


@pytest.mark.parametrize(
    ("target", "verdict"),
    [
        (Target("t", 10, ">=", "x", 12.0), "met"),
        (Target("t", 10, ">=", "x", 9.99), "not met"),
        (Target("t", 5, "<=", "ms", 5.0), "met"),
        (Target("t", 5, "<=", "ms", 5.1), "not met"),
        (Target("t", 5, "<=", "ms", None), "not measured"),
        (Target("t", 10, ">=", "x", 12.0, lower_bound=True), "met"),
        (Target("t", 10, ">=", "x", 8.0, lower_bound=True), "not measured"),
    ],
)
def test_target_verdicts(target: Target, verdict: str) -> None:
    assert target.verdict == verdict


def test_evaluate_marks_lower_bounds() -> None:
    rows = evaluate([Target("ratio", 10, ">=", "x", 16.0, lower_bound=True)])
    assert rows == [{"target": "ratio", "goal": ">= 10 x", "measured": "> 16", "verdict": "met"}]


# --- /proc parsing ---------------------------------------------------------------------


def test_parse_stat_reads_ppid_and_cpu_past_a_name_with_spaces_and_parens() -> None:
    tck = proctree.CLK_TCK
    fields = ["S", "41", *["0"] * 9, str(3 * tck), str(tck), str(2 * tck), "0"]
    text = f"1234 (python3 -c x) y) {' '.join(fields)} 20 0 1 0"
    assert proctree.parse_stat(text) == (41, 4.0, 2.0)


def test_parse_vmhwm() -> None:
    status = "Name:\tpython3\nVmPeak:\t  900000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1 kB\n"
    assert proctree.parse_vmhwm_mb(status) == 200.0
    assert proctree.parse_vmhwm_mb("Name:\tzombie\n") == 0.0


def test_descendants_walks_the_whole_tree() -> None:
    parents = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert proctree.descendants(10, parents) == [11, 12, 13]
    assert proctree.descendants(13, parents) == []


def test_tree_cpu_of_this_process_counts() -> None:
    assert proctree.tree_cpu_s(os.getpid()) > 0


# --- generator and LiteLLM config ------------------------------------------------------


@pytest.mark.parametrize(("rate", "k"), [(25, 1), (1000, 1), (1001, 2), (3200, 4), (10_000, 4)])
def test_generator_processes_for_a_rate(rate: float, k: int) -> None:
    assert openloop.processes_for(rate) == k


def test_request_body_streams_only_in_stream_mode() -> None:
    assert b'"stream"' not in openloop.request_body("m", "sync")
    assert b'"stream": true' in openloop.request_body("m", "stream")


def test_litellm_config_points_every_model_at_its_mock() -> None:
    config = yaml.safe_load(
        litellm_proxy.config_yaml({"gpt-4o-mini": "http://127.0.0.1:1/v1", "s": "http://h:2/v1"})
    )
    assert [(m["model_name"], m["litellm_params"]["model"], m["litellm_params"]["api_base"])
            for m in config["model_list"]] == [
        ("gpt-4o-mini", "openai/gpt-4o-mini", "http://127.0.0.1:1/v1"),
        ("s", "openai/s", "http://h:2/v1"),
    ]  # fmt: skip
    assert config["litellm_settings"]["num_retries"] == 0
    assert litellm_proxy.LITELLM_VERSION != "1.107.0"  # a compromised release


def test_litellm_constraints_pin_the_measured_version() -> None:
    pins = litellm_proxy.CONSTRAINTS.read_text().splitlines()
    assert f"litellm=={litellm_proxy.LITELLM_VERSION}" in pins


# --- RESULTS.md ------------------------------------------------------------------------


def ladder_json(rates_p50: list[tuple[float, float, bool]], cpu: float = 0.001) -> list[Any]:
    out = []
    for rate, p50, held in rates_p50:
        s = step(rate, ok=int(rate * 10), p99_ms=p50 + 10 if held else 2000.0)
        js = s.to_json()
        js["latency"] = {"p50_ms": p50, "p95_ms": p50 + 5, "p99_ms": js["latency"]["p99_ms"]}
        js["cpu_s_per_request"] = {"gateway": cpu, "loadgen": 0.5}
        out.append(js)
    return out


def report() -> dict[str, Any]:
    return {
        "command": "python bench/compare.py",
        "machine": {"nproc": 2, "cpu_model": "Test CPU", "kernel": "6", "python": "3.11"},
        "versions": {"tollway": "abc", "litellm": "1.106.12"},
        "plan": {"mock_latency_ms": 50, "quick": False, "step_s": 8.0, "routers": 1},
        "systems": {
            "mock": {"sync": ladder_json([(25, 50.0, True), (100, 50.0, True), (400, 51.0, True)])},
            "tollway": {
                "sync": ladder_json([(25, 53.0, True), (100, 54.0, True), (400, 90.0, True)]),
                "peak_rss_mb_after_sync": {
                    "ingress": 80.0,
                    "router-1": 120.0,
                    "clickhouse": 450.0,
                    "kafka": 250.0,
                },
                "async_bulk": {
                    "requests": 100,
                    "accepted_per_s": 900.0,
                    "errors": 0,
                    "latency": {"p50_ms": 1.0, "p99_ms": 2.0},
                },
                "async_bulk_api": {
                    "requests": 5000,
                    "items_per_call": 1000,
                    "connections": 4,
                    "accepted": 5000,
                    "refused_items": 0,
                    "call_statuses": {"202": 5},
                    "accepted_per_s": 6000.0,
                    "call_latency_ms": {"p50_ms": 150.0, "p99_ms": 300.0},
                    "cpu_ms_per_accepted": {"ingress": 0.14, "kafka": 0.03},
                    "load_avg_before": [1.0, 1.0, 1.0],
                    "load_avg_after": [1.5, 1.0, 1.0],
                },
                "cost_lag": {
                    "p50_ms": 700.0,
                    "p95_ms": 1500.0,
                    "p99_ms": 2500.0,
                    "max_ms": 2600.0,
                    "requests": 10,
                    "rate_rps": 50.0,
                    "rows_seen": 10,
                    "answered": 10,
                    "poll_interval_ms": 100,
                },
            },
            "litellm": {
                "sync": ladder_json([(25, 80.0, True), (100, 500.0, False)], cpu=0.03),
                "peak_rss_mb_after_sync": {"litellm": 300.0, "litellm/child-7": 380.0},
            },
        },
        "bulk_alone": {
            "status": "ok",
            "requests": 50000,
            "accepted": 50000,
            "refused_items": 0,
            "accepted_per_s": 8000.0,
            "call_latency_ms": {"p50_ms": 400.0, "p99_ms": 700.0},
            "cpu_ms_per_accepted": {"ingress": 0.12, "kafka": 0.01},
            "load_avg_before": [0.5, 0.5, 0.5],
        },
    }


def test_targets_from_a_report() -> None:
    verdicts = {t.name: (t.measured, t.verdict) for t in compare_render.targets(report())}
    assert verdicts["sync throughput, Tollway / LiteLLM"] == (16.0, "met")  # 400 vs 25 ok/s
    assert verdicts["added latency p50 at 100 req/s"] == (4.0, "met")
    # the bulk endpoint on Kafka and the ingress alone, not the in-stack run (6,000/s) nor
    # the 256 single-request connections' (900/s)
    name = (
        "async acceptance, bulk (POST /v1/async/bulk/chat/completions; Kafka and the ingress alone)"
    )
    assert verdicts[name] == (8000.0, "met")
    text = compare_render.render(report())
    assert "**8,000.0 accepted/s**" in text
    assert "**6,000.0 accepted/s**" in text
    assert verdicts["cost lag p99"] == (2500.0, "not met")
    assert verdicts["budget lag p99"] == (None, "not measured")
    # ClickHouse and the Kafka JVM are reported apart from the Python processes
    assert verdicts["peak RSS of each Tollway Python process (sync load)"] == (120.0, "met")


def test_throughput_ratio_is_a_lower_bound_when_litellm_held_nothing() -> None:
    r = report()
    r["systems"]["litellm"]["sync"] = ladder_json([(25, 3000.0, False)])
    assert compare_render.throughput_ratio(r, "sync") == (16.0, True)
    target = compare_render.targets(r)[0]
    assert (target.measured, target.lower_bound, target.verdict) == (16.0, True, "met")


def test_render_has_the_headline_ratios_and_every_section() -> None:
    text = compare_render.render(report())
    assert "| sync: sustained throughput (req/s, higher is better) | 400.0 | 25.0 | 16.00 |" in text
    assert "calls of 1,000 to `POST /v1/async/bulk/chat/completions`" in text
    assert "**6,000.0 accepted/s**" in text
    assert "ingress 0.14, kafka 0.03" in text
    # CPU compared at the highest rate both held (25/s): 1 ms vs 30 ms, the generator excluded
    assert "at 25 req/s (lower is better) | 1.0 | 30.0 | 0.03 |" in text
    assert "| cost lag p99 | <= 2000 ms | 2,500.0 | not met |" in text
    for heading in ("## Headline", "## Targets", "## Sync chat", "## Async acceptance",
                    "## Batch end to end", "## Cost lag", "## How it is measured"):  # fmt: skip
        assert heading in text
    assert "Test CPU" in text
    assert "1.106.12" in text


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ([{"mode": "reservations", "late_calls": 3, "late_p99_ms": 420.5}], 420.5),
        ([{"mode": "reservations", "late_calls": 0, "late_p99_ms": None}], 0.0),  # none late
        ([{"mode": "ingress-only", "late_calls": 9, "late_p99_ms": 900.0}], None),
        ([], None),
    ],
)
def test_budget_lag_is_the_reservations_phase(
    phases: list[dict[str, Any]], expected: float | None
) -> None:
    r = report()
    r["budget_lag"] = {"status": "ok", "figures": {"phases": phases}}
    assert compare_render.budget_lag_p99(r) == expected


def test_render_shows_the_core_variant_and_the_profile_ranked_by_cpu() -> None:
    r = report()
    r["load_avg_at_start"] = [1.5, 2.25, 3.0]
    r["systems"]["tollway-core"] = {"sync": ladder_json([(25, 52.0, True), (100, 53.0, True)])}
    r["systems"]["tollway"]["profile"] = {
        "status": "ok",
        "rate_rps": 100.0,
        "step": {"cpu_s_per_request": {"ingress": 0.001, "clickhouse": 0.002}},
        "processes": {
            "ingress": {"samples": 50, "self": [{"function": "parse (x.py)", "share": 0.5}]},
            "clickhouse": {"samples": 90, "self": [{"function": "query (y.py)", "share": 0.25}]},
        },
    }
    text = compare_render.render(r)
    assert "at start: 1.50 / 2.25 / 3.00" in text
    assert (
        "| sync: sustained throughput, Tollway core only (ingress + router + Kafka) | 100.0 |"
        in text
    )
    profile = text.split("## Profile", 1)[1]
    assert profile.index("| clickhouse | 2.0 | 90 | 25% query (y.py) |") < profile.index(
        "| ingress | 1.0 | 50 | 50% parse (x.py) |"
    )


def test_render_says_why_there_is_no_profile() -> None:
    r = report()
    r["systems"]["tollway"]["profile"] = {"status": "not run: py-spy is not installed"}
    assert "Profile not run: py-spy is not installed." in compare_render.render(r)


def test_a_broken_step_says_how_long_the_gateway_took_to_recover() -> None:
    r = report()
    r["systems"]["litellm"]["sync"][-1].update(drain_s=3.0, recover_s=2.4)
    assert "| **broke** (recovered in 5 s) |" in compare_render.render(r)
