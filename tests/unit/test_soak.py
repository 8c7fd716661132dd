"""The memory soak's pure parts: the slope and verdict maths, the /proc parser, the tables,
the report section, the traffic mix and the served-request check (tests/soak).

The soak itself (`make soak`) needs the whole stack for 30 minutes; these prove, without
it, that a leaking process fails, a flat or noisy one passes, and the report is right.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.soak.memory import (
    Bound,
    Sample,
    assess,
    least_squares_slope,
    table_markdown,
    table_text,
)
from tests.soak.report import END, START, SoakFacts, replace_section, section, verdict_line
from tests.soak.sampler import RssSampler, parse_status
from tests.soak.served import served_problems
from tests.soak.traffic import MIX, kind_of

MIB_KB = 1024
DURATION_S = 1800.0


def series(
    rss_mb_at: Callable[[float], float], duration_s: float = DURATION_S, every_s: float = 10.0
) -> list[Sample]:
    """Samples every `every_s` whose RSS (MB) is `rss_mb_at(t_s)`; VmHWM the running max."""
    out: list[Sample] = []
    peak = 0
    for i in range(int(duration_s / every_s) + 1):
        at = i * every_s
        rss_kb = round(rss_mb_at(at) * MIB_KB)
        peak = max(peak, rss_kb)
        out.append(Sample(at, rss_kb, peak))
    return out


@pytest.mark.parametrize(
    ("points", "slope"),
    [
        ([(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)], 2.0),
        ([(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)], 0.0),
        ([(0.0, 1.0), (1.0, 0.0), (2.0, 1.0), (3.0, 0.0)], -0.2),
        ([(0.0, 1.0)], None),
        ([(1.0, 1.0), (1.0, 2.0)], None),
    ],
)
def test_least_squares_slope(points: list[tuple[float, float]], slope: float | None) -> None:
    found = least_squares_slope(points)
    if slope is None:
        assert found is None
    else:
        assert found == pytest.approx(slope)


@pytest.mark.parametrize(
    ("duration_s", "warmup_s"), [(1800.0, 300.0), (180.0, 30.0), (7200.0, 300.0)]
)
def test_warmup_is_five_minutes_or_the_first_sixth(duration_s: float, warmup_s: float) -> None:
    assert Bound().warmup_s(duration_s) == pytest.approx(warmup_s)


def test_allowed_growth_is_25_mb_or_ten_percent_whichever_is_larger() -> None:
    bound = Bound()
    assert bound.allowed_growth_mb(100.0) == 25.0
    assert bound.allowed_growth_mb(400.0) == pytest.approx(40.0)


def test_a_flat_process_after_a_steep_warm_up_passes() -> None:
    # 50 MB -> 150 MB during the first 5 minutes, then flat: warm-up growth is not judged
    p = assess("router-1", series(lambda t: 50 + min(t, 300) / 3), DURATION_S, Bound())
    assert p.ok
    assert p.start_mb == pytest.approx(50.0)
    assert p.warm_mb == pytest.approx(150.0)
    assert p.end_mb == pytest.approx(150.0)
    assert p.peak_mb == pytest.approx(150.0)
    assert p.slope_mb_per_h == pytest.approx(0.0, abs=0.01)
    assert p.slope_judged


def test_a_steady_leak_fails_on_its_trend() -> None:
    # 30 MB/h: over the 25 judged minutes that is only 12.5 MB (under the 25 MB growth bound)
    p = assess("loader", series(lambda t: 100 + 30 * t / 3600), DURATION_S, Bound())
    assert p.slope_mb_per_h == pytest.approx(30.0)
    assert not p.ok
    assert p.problems == ("trend 30.0 MB/h (bound 20 MB/h)",)


def test_a_step_after_the_warm_up_fails_on_growth() -> None:
    p = assess("ingress", series(lambda t: 60 if t < 900 else 100), DURATION_S, Bound())
    assert p.growth_mb == pytest.approx(40.0)
    assert any(problem.startswith("grew 40.0 MB") for problem in p.problems)


def test_noise_around_a_level_passes() -> None:
    p = assess("callbacks", series(lambda t: 80 + (6 if int(t) % 20 else -6)), DURATION_S, Bound())
    assert p.ok
    assert abs(p.growth_mb) < 1


def test_a_short_run_does_not_judge_the_extrapolated_slope() -> None:
    # 3 MB over 150 s extrapolates to 72 MB/h: noise at this length, so not judged
    p = assess("mock-provider", series(lambda t: 50 + t / 50, 180.0), 180.0, Bound())
    assert p.slope_mb_per_h == pytest.approx(72.0, rel=1e-3)
    assert not p.slope_judged
    assert p.ok


def test_info_only_processes_are_reported_never_failed() -> None:
    p = assess("kafka", series(lambda t: 200 + t), DURATION_S, Bound(), judged=False)
    assert p.ok
    assert p.growth_mb > 1000


def test_file_backed_pages_are_reported_not_judged() -> None:
    """A program faulting in more of a big mapped library (the embedded ClickHouse) is not
    a leak; the same growth in anonymous memory is."""

    def sample(at: float, file_mb: float) -> Sample:
        rss_kb = round((100 + file_mb) * MIB_KB)
        return Sample(at, rss_kb, rss_kb, round(file_mb * MIB_KB))

    mapping_in = [sample(i * 10.0, 200 + 40 * i * 10 / 3600) for i in range(181)]
    p = assess("clickhouse", mapping_in, DURATION_S, Bound())
    assert p.ok
    assert (round(p.start_mb), round(p.end_mb)) == (100, 100)
    assert (round(p.file_start_mb), round(p.file_end_mb)) == (200, 220)
    leaking = [Sample(s.at_s, s.rss_kb, s.hwm_kb, 200 * MIB_KB) for s in mapping_in]
    assert "trend 40.0 MB/h" in assess("clickhouse", leaking, DURATION_S, Bound()).problems[0]


def test_a_process_without_samples_after_the_warm_up_is_a_problem() -> None:
    p = assess("cost-processor", [Sample(0.0, 50 * MIB_KB, 50 * MIB_KB)], DURATION_S, Bound())
    assert p.problems == ("no sample after the warm-up",)


def test_tables_show_every_figure_and_the_verdict() -> None:
    flat = assess("router-1", series(lambda _: 80.0), DURATION_S, Bound())
    leak = assess("loader", series(lambda t: 100 + 30 * t / 3600), DURATION_S, Bound())
    info = assess("kafka-broker (JVM)", series(lambda _: 300.0), DURATION_S, Bound(), judged=False)
    text = table_text([flat, leak, info]).splitlines()
    assert text[0].split()[:5] == ["process", "start", "warm", "end", "peak"]
    assert text[1].split() == ["router-1", "80.0", "80.0", "80.0", "80.0", "+0.0", "25.0",
                               "+0.0", "0->0", "ok"]  # fmt: skip
    assert "+30.0" in text[2]
    assert "OVER: trend 30.0 MB/h" in text[2]
    assert text[3].endswith("info only")
    markdown = table_markdown([flat, info]).splitlines()
    assert markdown[0].startswith("| process | start |")
    assert markdown[1].startswith("|---|---:|")
    assert markdown[2] == (
        "| router-1 | 80.0 | 80.0 | 80.0 | 80.0 | +0.0 | 25.0 | +0.0 | 0->0 | ok |"
    )


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n", (102400, 204800, 0)),
        ("Name:\tpython\nVmRSS:\t  1024 kB\n", (1024, 1024, 0)),
        ("VmHWM:\t 9 kB\nVmRSS:\t 8 kB\nRssAnon:\t 5 kB\nRssFile:\t 3 kB\n", (8, 9, 3)),
        ("Name:\tzombie\nState:\tZ (zombie)\n", None),
    ],
)
def test_parse_status(text: str, found: tuple[int, int, int] | None) -> None:
    assert parse_status(text) == found


def test_the_sampler_reads_live_processes_and_records_exits() -> None:
    pids: dict[str, int | None] = {"me": os.getpid(), "gone": os.getpid()}
    sampler = RssSampler(lambda: dict(pids))
    sampler.tick()
    pids["gone"] = None
    sampler.tick()
    assert len(sampler.series["me"]) == 2
    assert sampler.series["me"][0].rss_kb > 0
    assert len(sampler.series["gone"]) == 1
    assert len(sampler.exits) == 1
    assert sampler.exits[0].startswith(f"gone ({os.getpid()}) at t+")
    sampler.tick()  # an exit is recorded once
    assert len(sampler.exits) == 1


def test_the_mix_is_four_async_three_sync_three_streamed() -> None:
    kinds = [kind_of(i) for i in range(100)]
    assert (kinds.count("async"), kinds.count("sync"), kinds.count("stream")) == (40, 30, 30)
    assert kinds[:10] == list(MIX)


def test_served_requests_need_one_result_and_one_row() -> None:
    found = served_problems(
        ["a", "b", "c", "d", "a"],
        result_ids={"a", "b", "d"},
        ch_requests={"a": ["e1"], "b": ["e1", "e2"], "c": ["e3"]},
    )
    assert found == {
        "LOST served: no result on tollway.results": ["c"],
        "LOST served: no row in ClickHouse requests": ["d"],
        "DOUBLE-BILLED served: several rows in ClickHouse requests": ["b"],
    }
    assert served_problems(["a"], {"a"}, {"a": ["e1"]}) == {}


def facts(memory_ok: bool, problems: tuple[str, ...] = ()) -> SoakFacts:
    rss = (lambda _: 80.0) if memory_ok else (lambda t: 80 + 40 * t / 3600)
    return SoakFacts(
        day="2026-01-02",
        duration_s=DURATION_S,
        rate_per_s=30.0,
        mix="40 % async, 30 % sync, 30 % stream",
        batches="a 20-line batch every 60 s",
        sample_every_s=10.0,
        submitted={"async": 4, "sync": 3, "stream": 3},
        nominal=10,
        late_s_max=0.2,
        outcomes={"sync 200": 3},
        requests_accepted=24,
        served=6,
        correctness_problems=problems,
        exits=(),
        memory=[assess("router-1", series(rss), DURATION_S, Bound())],
        bound=Bound(),
    )


def test_the_verdict_names_what_failed() -> None:
    assert verdict_line(facts(memory_ok=True)).startswith("PASSED")
    assert verdict_line(facts(memory_ok=False)) == "FAILED: router-1 over the bound"
    assert verdict_line(facts(True, ("LOST x: 1",))) == "FAILED: 1 correctness problem(s)"


def test_the_soak_section_replaces_only_its_own_markers(tmp_path: Path) -> None:
    chaos = "<!-- chaos-results:start -->\nchaos figures\n<!-- chaos-results:end -->"
    page = f"# Reliability\n\n{chaos}\n\n## Memory soak\n\n{START}\nold\n{END}\ntail\n"
    done = replace_section(page, section(facts(memory_ok=True)))
    assert chaos in done
    assert done.startswith("# Reliability\n")
    assert done.endswith(f"{END}\ntail\n")
    assert "\nold\n" not in done
    assert "Last soak: 2026-01-02, `make soak`, 30 min at 30 req/s. **PASSED" in done
    assert "| router-1 | 80.0 |" in done
    again = replace_section(done, section(facts(memory_ok=False)))
    assert again.count(START) == 1
    assert "FAILED: router-1 over the bound" in again
    with pytest.raises(AssertionError, match="no soak results markers"):
        replace_section("# no markers", section(facts(memory_ok=True)))
