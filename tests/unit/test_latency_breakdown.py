"""The added-latency profile's pure parts (bench/latency_breakdown.py) and its report section."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import compare_render
import latency_breakdown as lb

MS = 1_000_000


def span(
    trace: str, name: str, start_ms: float, end_ms: float, kind: str = "internal"
) -> dict[str, Any]:
    return {
        "trace_id": trace,
        "name": name,
        "kind": kind,
        "start_unix_nano": int(start_ms * MS),
        "end_unix_nano": int(end_ms * MS),
    }


def request_spans(trace: str, t0: float) -> list[dict[str, Any]]:
    """ingress 0..60, publish 1..3, router consume 4..58, provider call 5..56 (ms after t0)."""
    return [
        span(trace, lb.SERVER_SPAN, t0, t0 + 60, "server"),
        span(trace, lb.PUBLISH_SPAN, t0 + 1, t0 + 3, "producer"),
        span(trace, lb.CONSUME_SPAN, t0 + 4, t0 + 58, "consumer"),
        span(trace, "chat gpt-4o-mini", t0 + 5, t0 + 56, "client"),
    ]


def test_steps_of_one_request() -> None:
    (request,) = lb.requests_from(request_spans("a", 1000.0))
    steps = request.steps_ms(mock_latency_ms=50)
    assert steps == pytest.approx(
        {
            "ingress: admit": 1.0,
            "kafka: request hop": 3.0,
            "router: before call": 1.0,
            "provider call minus mock latency": 1.0,
            "reply path": 4.0,
            "in the ingress span, all but the provider call": 9.0,
        }
    )
    assert tuple(steps) == lb.STEPS


def test_incomplete_traces_and_other_spans_are_left_out() -> None:
    spans = request_spans("whole", 0.0) + request_spans("torn", 100.0)[:3]
    spans.append(span("whole", "publish tollway.results", 57, 58, "producer"))
    spans.append(span("whole", "chat gpt-4o-mini", 2, 3, "internal"))  # not a client span
    assert [r.server[0] for r in lb.requests_from(spans)] == [0]


def test_a_fallback_keeps_its_first_provider_call() -> None:
    spans = [*request_spans("a", 0.0), span("a", "chat other-model", 30, 40, "client")]
    (request,) = lb.requests_from(spans)
    assert request.call == (5 * MS, 56 * MS)


def test_summary_counts_only_the_measured_window() -> None:
    spans = [s for i in range(10) for s in request_spans(f"t{i}", i * 100.0)]
    requests = lb.requests_from(spans)
    summary = lb.summarize(requests, 50, (300 * MS, 800 * MS))
    assert summary["requests"] == 5
    assert summary["steps"]["kafka: request hop"] == {"p50_ms": 3.0, "p95_ms": 3.0, "p99_ms": 3.0}
    assert lb.summarize(requests, 50, (1, 2))["requests"] == 0


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert lb.percentile(values, 0.5) == 50.0
    assert lb.percentile(values, 0.99) == 99.0
    assert lb.percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        lb.percentile([], 0.5)


def test_read_spans_skips_a_torn_last_line(tmp_path: Path) -> None:
    lines = [json.dumps(s) for s in request_spans("a", 0.0)]
    (tmp_path / "tollway-router-1.jsonl").write_text("\n".join(lines) + '\n{"trace_id": "a", "na')
    assert len(lb.read_spans(tmp_path)) == 4


def test_loopback_round_trip_is_measured() -> None:
    rtt = lb.loopback_rtt(n=20)
    assert 0 < rtt["p50_ms"] <= rtt["p99_ms"]


def test_report_section_shows_every_step_and_the_floors() -> None:
    requests = lb.requests_from([s for i in range(4) for s in request_spans(f"t{i}", i * 100.0)])
    rates = {
        "10": {
            "client_latency": {"p50_ms": 61.0, "p95_ms": 70.0, "p99_ms": 80.0},
            **lb.summarize(requests, 50, (0, 10**12)),
        }
    }
    hop = {"rate_rps": 50.0, "n": 3, "ack": {"p50_ms": 2.0, "p95_ms": 3.0, "p99_ms": 4.0},
           "hop": {"p50_ms": 2.5, "p95_ms": 3.5, "p99_ms": 5.0}}  # fmt: skip
    rtt = {"p50_ms": 0.2, "p95_ms": 0.3, "p99_ms": 0.4}
    report = {"latency_breakdown": {"rates": rates, "kafka_hop": hop, "loopback_rtt": rtt}}
    text = "\n".join(compare_render._breakdown_section(report))
    for step in lb.STEPS:
        assert f"| {step} | " in text
    assert "| kafka: request hop | 3.0 / 3.0 / 3.0 |" in text
    assert "at 10 req/s (4 requests)" in text
    assert "2.50 / 5.00 ms to a consumer" in text
    assert compare_render._breakdown_section({}) == []


def test_batch_profile_ranks_processes_and_bounds_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    text = "\n".join(compare_render._batch_cpu({"router-1": 0.0005, "kafka": 0.0015}))
    assert "kafka 1.50, router-1 0.50; **total 2.00 ms**" in text
    assert "2 cores allow at most 1,000 lines/s" in text
    assert compare_render._batch_cpu(None) == []


def test_batch_phases_from_polled_progress() -> None:
    from compare_stats import batch_phases

    progress = [(0.5, 0), (1.0, 1), (2.0, 100), (10.0, 900), (11.0, 1000), (13.0, 1000)]
    phases = batch_phases(progress, 1000)
    assert phases == {
        "first_line_s": 1.0,
        "steady_lines_per_s": 100,  # 800 lines between 2.0 s and 10.0 s
        "all_lines_counted_s": 11.0,
        "final_after_last_line_s": 2.0,
    }
    assert batch_phases([(1.0, 5)], 1000)["steady_lines_per_s"] is None
