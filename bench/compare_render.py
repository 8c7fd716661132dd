"""bench/RESULTS.md from the JSON report of bench/compare.py (pure: dict in, Markdown out).

The headline is ratios (Tollway / LiteLLM) at the same offered load on the same
machine, not absolute seconds; every target of issue 9 is listed as met, not met
or not measured. Latency figures are milliseconds; CPU is seconds per request
(shown as ms); memory is VmHWM in MiB.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from compare_stats import Target, added_latency_ms, evaluate, ratio
from latency_breakdown import STEPS

NOT_PYTHON = ("kafka", "clickhouse")  # the JVM and the embedded ClickHouse: reported apart
SYSTEMS = ("mock", "tollway", "tollway-core", "litellm")
GATEWAYS = ("tollway", "tollway-core", "litellm")


def _load(value: object) -> str:
    """A load average triple as `1.23 / 4.56 / 7.89`."""
    if isinstance(value, list | tuple) and len(value) == 3:
        return " / ".join(f"{float(v):.2f}" for v in value)
    return "n/a"


def _steps(report: Mapping[str, Any], system: str, scenario: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = report.get("systems", {}).get(system, {}).get(scenario, [])
    return steps


def sustained_step(steps: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    best: Mapping[str, Any] | None = None
    for step in steps:
        if not step["held"]:
            break
        best = step
    return best


def step_at(steps: Sequence[Mapping[str, Any]], rate: float) -> Mapping[str, Any] | None:
    return next((s for s in steps if abs(float(s["rate_rps"]) - rate) < 1e-6), None)


def added_at(
    report: Mapping[str, Any], system: str, scenario: str, rate: float, key: str = "latency"
) -> dict[str, float] | None:
    mine = step_at(_steps(report, system, scenario), rate)
    direct = step_at(_steps(report, "mock", scenario), rate)
    if mine is None or direct is None or not mine["held"]:
        return None
    return added_latency_ms(mine.get(key), direct.get(key))


def throughput_bound(
    report: Mapping[str, Any], system: str, scenario: str
) -> tuple[float | None, bool]:
    """(sustained req/s, False), or (the ladder's first rate, True) when no step held:
    then the system sustains less than that rate."""
    steps = _steps(report, system, scenario)
    step = sustained_step(steps)
    if step is not None:
        return float(step["throughput_rps"]), False
    if steps:
        return float(steps[0]["rate_rps"]), True
    return None, False


def throughput_ratio(report: Mapping[str, Any], scenario: str) -> tuple[float | None, bool]:
    """Tollway / LiteLLM sustained throughput; (ratio, True) when it is only a lower bound."""
    mine, mine_below = throughput_bound(report, "tollway", scenario)
    theirs, theirs_below = throughput_bound(report, "litellm", scenario)
    if mine is None or theirs is None or mine_below:
        return None, False
    return ratio(mine, theirs), theirs_below


def _bounded(value: float | None, below: bool, sign: str = "<", digits: int = 1) -> object:
    if value is None:
        return None
    text = f"{value:,.{digits}f}"
    return f"{sign} {text}" if below else text


def _ratio_cell(value: float | None) -> str:
    """Ratios keep 2 decimals (0.03 must not print as 0.0)."""
    return "n/a" if value is None else f"{value:.2f}"


def common_rate(report: Mapping[str, Any], systems: Sequence[str], scenario: str) -> float | None:
    """The highest ladder rate every system in `systems` held (None if one held none)."""
    best: list[float] = []
    for system in systems:
        step = sustained_step(_steps(report, system, scenario))
        if step is None:
            return None
        best.append(float(step["rate_rps"]))
    return min(best) if best else None


def comparison_rate(report: Mapping[str, Any]) -> float | None:
    """Where CPU per request is compared: the highest sync rate both gateways held, else the
    ladder's first rate (CPU per request issued, even if one of them broke there)."""
    rate = common_rate(report, ["tollway", "litellm"], "sync")
    if rate is not None:
        return rate
    steps = _steps(report, "tollway", "sync")
    return float(steps[0]["rate_rps"]) if steps else None


def total_cpu_ms(step: Mapping[str, Any] | None) -> float | None:
    if step is None:
        return None
    cpu: Mapping[str, float] = step["cpu_s_per_request"]
    return round(sum(v for k, v in cpu.items() if k != "loadgen") * 1000, 3)


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def python_peak_rss(rss: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in rss.items() if not k.startswith(NOT_PYTHON)}


def budget_phases(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    figures = report.get("budget_lag", {}).get("figures")
    if not isinstance(figures, Mapping):
        return []
    return [p for p in figures.get("phases", []) if isinstance(p, Mapping)]


def budget_lag_p99(report: Mapping[str, Any]) -> float | None:
    """Budget lag p99 (ms) as Tollway runs by default (router reservations): of the calls
    started after the budget ran out, how late (p99); 0 when none started after it."""
    for phase in budget_phases(report):
        if phase.get("mode") == "reservations":
            if not phase.get("late_calls"):
                return 0.0
            late = phase.get("late_p99_ms")
            return None if late is None else float(late)
    return None


def targets(report: Mapping[str, Any]) -> list[Target]:
    tollway = report.get("systems", {}).get("tollway", {})
    sync_ratio = throughput_ratio(report, "sync")
    added_100 = added_at(report, "tollway", "sync", 100.0)
    rss = python_peak_rss(tollway.get("peak_rss_mb_after_sync", {}))
    batch = tollway.get("batch", {})
    lines = batch.get("lines")
    return [
        Target("sync throughput, Tollway / LiteLLM", 10, ">=", "x", *sync_ratio),
        Target(
            "added latency p50 at 100 req/s",
            5,
            "<=",
            "ms",
            None if added_100 is None else added_100["p50_ms"],
        ),
        Target(
            "added latency p99 at 100 req/s",
            25,
            "<=",
            "ms",
            None if added_100 is None else added_100["p99_ms"],
        ),
        Target(
            "async acceptance, bulk (POST /v1/async/bulk/chat/completions; Kafka and the "
            "ingress alone)",
            5000,
            ">=",
            "req/s",
            report.get("bulk_alone", {}).get("accepted_per_s"),
        ),
        Target(
            f"batch end to end ({_fmt(lines)} lines)",
            1000,
            ">=",
            "req/s",
            batch.get("end_to_end_rps"),
        ),
        Target("cost lag p99", 2000, "<=", "ms", tollway.get("cost_lag", {}).get("p99_ms")),
        Target("budget lag p99", 1000, "<=", "ms", budget_lag_p99(report)),
        Target(
            "peak RSS of each Tollway Python process (sync load)",
            200,
            "<=",
            "MiB",
            max(rss.values()) if rss else None,
        ),
    ]


def _ladder_rows(report: Mapping[str, Any], system: str, scenario: str) -> list[list[object]]:
    key = "ttft" if scenario == "stream" else "latency"
    rows: list[list[object]] = []
    for step in _steps(report, system, scenario):
        lat = step.get(key) or {}
        added = added_at(report, system, scenario, float(step["rate_rps"]), key)
        rows.append([
            _fmt(step["rate_rps"], 0), step["offered_rps"], step["throughput_rps"],
            f"{step['error_ratio'] * 100:.2f} %", lat.get("p50_ms"), lat.get("p95_ms"),
            lat.get("p99_ms"),
            "-" if system == "mock" else (
                "n/a" if added is None
                else f"{added['p50_ms']:.1f} / {added['p95_ms']:.1f} / {added['p99_ms']:.1f}"
            ),
            "yes" if step["held"] else "**broke**" + (
                f" (recovered in {step['drain_s'] + step['recover_s']:.0f} s)"
                if "recover_s" in step else ""
            ),
        ])  # fmt: skip
    return rows


def _headline(report: Mapping[str, Any]) -> list[str]:
    cells: dict[str, list[object]] = {}
    for scenario in ("sync", "stream"):
        t, t_below = throughput_bound(report, "tollway", scenario)
        lit, l_below = throughput_bound(report, "litellm", scenario)
        r, r_above = throughput_ratio(report, scenario)
        cells[scenario] = [
            _bounded(t, t_below),
            _bounded(lit, l_below),
            _bounded(r, r_above, ">", 2),
        ]
    rate = comparison_rate(report)
    cpu_t = total_cpu_ms(step_at(_steps(report, "tollway", "sync"), rate)) if rate else None
    cpu_l = total_cpu_ms(step_at(_steps(report, "litellm", "sync"), rate)) if rate else None
    rows: list[list[object]] = [
        ["sync: sustained throughput (req/s, higher is better)", *cells["sync"]],
        ["streaming: sustained rate (req/s, higher is better)", *cells["stream"]],
    ]  # fmt: skip
    core, core_below = throughput_bound(report, "tollway-core", "sync")
    if core is not None:
        lit, l_below = throughput_bound(report, "litellm", "sync")
        rows.append([
            "sync: sustained throughput, Tollway core only (ingress + router + Kafka)",
            _bounded(core, core_below), _bounded(lit, l_below),
            _bounded(ratio(core, lit), l_below and not core_below, ">", 2),
        ])  # fmt: skip
    for scenario, key, what in (
        ("sync", "latency", "added latency"),
        ("stream", "ttft", "added TTFT"),
    ):
        common = common_rate(report, ["tollway", "litellm"], scenario)
        for at in sorted({100.0, *([common] if common else [])}):
            a_t = added_at(report, "tollway", scenario, at, key)
            a_l = added_at(report, "litellm", scenario, at, key)
            for p in ("p50_ms", "p99_ms"):
                t = None if a_t is None else a_t[p]
                lit = None if a_l is None else a_l[p]
                rows.append([f"{scenario}: {what} {p[:3]} at {at:.0f} req/s (ms, lower is better)",
                             t, lit, _ratio_cell(ratio(t, lit))])  # fmt: skip
    rows.append([
        f"sync: CPU ms per request, all processes, at {_fmt(rate, 0)} req/s (lower is better)",
        cpu_t, cpu_l, _ratio_cell(ratio(cpu_t, cpu_l)),
    ])  # fmt: skip
    rss_t = python_peak_rss(report.get("systems", {}).get("tollway", {})
                            .get("peak_rss_mb_after_sync", {}))  # fmt: skip
    rss_l = report.get("systems", {}).get("litellm", {}).get("peak_rss_mb_after_sync", {})
    worker_l = max((v for k, v in rss_l.items() if "/child-" in k), default=None)
    rows.append([
        "peak RSS of the largest Python process (MiB)",
        max(rss_t.values()) if rss_t else None, worker_l,
        _ratio_cell(ratio(max(rss_t.values()) if rss_t else None, worker_l)),
    ])  # fmt: skip
    return _table(["figure", "Tollway", "LiteLLM proxy", "Tollway / LiteLLM"], rows)


def _profile_section(report: Mapping[str, Any]) -> list[str]:
    prof = report.get("systems", {}).get("tollway", {}).get("profile")
    if not prof:
        return []
    out = ["## Profile: Tollway under sync load (py-spy, top self time per process)", ""]
    if prof.get("status") != "ok":
        return [*out, f"Profile {prof.get('status')}.", ""]
    cpu = prof["step"]["cpu_s_per_request"]
    out += [
        f"One more sync step at {prof['rate_rps']:.0f} req/s with py-spy (100 Hz, non-blocking) "
        "on every Python process; full tables in bench/out/compare-profiles/. Share = of that "
        "process's samples; CPU = ms per request of the process in that step.",
        "",
    ]
    rows: list[list[object]] = []
    ranked = sorted(prof["processes"].items(), key=lambda kv: -float(cpu.get(kv[0], 0.0)))
    for name, data in ranked:
        top = data.get("self", [])[:4]
        rows.append([
            name, round(float(cpu.get(name, 0.0)) * 1000, 2), data.get("samples"),
            "; ".join(f"{r['share'] * 100:.0f}% {r['function']}" for r in top),
        ])  # fmt: skip
    out += _table(["process", "CPU ms/req", "samples", "top self time"], rows)
    return [*out, ""]


def _batch_cpu(cpu_s_per_line: Mapping[str, float] | None) -> list[str]:
    """The batch target's profile: CPU per line by process over the whole batch, and the
    rate those CPU costs allow on this machine's cores."""
    if not cpu_s_per_line:
        return []
    ranked = sorted(cpu_s_per_line.items(), key=lambda kv: -kv[1])
    total_ms = sum(cpu_s_per_line.values()) * 1000
    cores = os.cpu_count() or 1
    return [
        "CPU per line over the whole batch (upload to completed; ms, the process tree): "
        + ", ".join(f"{name} {value * 1000:.2f}" for name, value in ranked)
        + f"; **total {total_ms:.2f} ms**, so {cores} cores allow at most "
        f"{cores * 1000 / total_ms:,.0f} lines/s before the mock's and the poller's share.",
        "",
    ]


def _breakdown_section(report: Mapping[str, Any]) -> list[str]:
    """The added-latency profile: bench/latency_breakdown.py's steps per traced request."""
    data = report.get("latency_breakdown")
    if not data:
        return []
    out = [
        "## Profile: where the added sync latency goes (traces)",
        "",
        "The whole stack once more, every process writing trace spans to files "
        "(TOLLWAY_OTEL_EXPORTER=jsonl; tracing costs some CPU itself, so compare shares, not "
        "sums, with the ladder above); open-loop sync load, each traced request split into "
        "the steps of bench/latency_breakdown.py. ms, p50 / p95 / p99.",
        "",
    ]
    rates = data.get("rates", {})
    header = ["step", *(f"at {rate} req/s ({rates[rate].get('requests', 0)} requests)"
                        for rate in rates)]  # fmt: skip
    rows: list[list[object]] = []
    for step in STEPS:
        cells: list[object] = [step]
        for rate in rates:
            v = rates[rate].get("steps", {}).get(step)
            cells.append(f"{v['p50_ms']} / {v['p95_ms']} / {v['p99_ms']}" if v else "n/a")
        rows.append(cells)
    client = [f"{r['client_latency']['p50_ms']:.1f} / {r['client_latency']['p95_ms']:.1f} / "
              f"{r['client_latency']['p99_ms']:.1f}" for r in rates.values()]  # fmt: skip
    rows.append(["client-measured latency, traced run (mock: 50 ms)", *client])
    out += _table(header, rows)
    hop, rtt = data.get("kafka_hop"), data.get("loopback_rtt")
    if hop and rtt:
        out += [
            "",
            f"Floors on the same machine and broker: a raw Kafka hop (aiokafka, one record, "
            f"acks=all, idempotent, linger 0, at {hop['rate_rps']:.0f}/s) took "
            f"{hop['ack']['p50_ms']:.2f} / {hop['ack']['p99_ms']:.2f} ms (p50 / p99) to its ack "
            f"and {hop['hop']['p50_ms']:.2f} / {hop['hop']['p99_ms']:.2f} ms to a consumer; a "
            f"64-byte loopback TCP round trip between two Python processes "
            f"{rtt['p50_ms']:.3f} / {rtt['p99_ms']:.3f} ms. A sync request crosses Kafka twice "
            "(request, reply), so two raw hops are the floor of Tollway's added latency here.",
        ]
    return [*out, ""]


def _cpu_rss_section(report: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    rate = comparison_rate(report)
    for system in GATEWAYS:
        data = report.get("systems", {}).get(system)
        if not data:
            continue
        sus = sustained_step(_steps(report, system, "sync"))
        at_common = step_at(_steps(report, system, "sync"), rate) if rate else None
        names = sorted(set((at_common or {}).get("cpu_s_per_request", {}))
                       | set((sus or {}).get("cpu_s_per_request", {})))  # fmt: skip
        rows = [
            [name,
             None if at_common is None else at_common["cpu_s_per_request"].get(name, 0) * 1000,
             None if sus is None else sus["cpu_s_per_request"].get(name, 0) * 1000]
            for name in names
        ]  # fmt: skip
        rows.append(["**total** (without the load generator)", total_cpu_ms(at_common),
                     total_cpu_ms(sus)])  # fmt: skip
        out += [f"**{system}** (sync; CPU ms per request; the process tree, children included)", ""]
        out += _table(
            ["process", f"at {_fmt(rate, 0)} req/s",
             f"at its sustained {_fmt(None if sus is None else sus['rate_rps'], 0)} req/s"],
            [[r[0], None if r[1] is None else round(r[1], 3),
              None if r[2] is None else round(r[2], 3)] for r in rows],
        )  # fmt: skip
        out.append("")
        rss = data.get("peak_rss_mb_after_sync", {})
        out += [f"Peak RSS (VmHWM, MiB) after the sync ladder, {system}:", ""]
        out += _table(["process", "MiB"], [[k, v] for k, v in sorted(rss.items())])
        out.append("")
    return out


def render(report: Mapping[str, Any]) -> str:
    m = report.get("machine", {})
    versions = report.get("versions", {})
    plan = report.get("plan", {})
    tollway = report.get("systems", {}).get("tollway", {})
    lines = [
        "# Tollway side by side with LiteLLM's proxy",
        "",
        f"Generated by `{report.get('command', 'python bench/compare.py')}` "
        "(`make bench-compare`; `--quick` for a smoke run). Numbers from one run on a shared, "
        "noisy machine: compare the ratios, not the absolute figures.",
        "",
        f"- Machine: {m.get('nproc')} cores, {m.get('cpu_model')}, Linux {m.get('kernel')}, "
        f"Python {m.get('python')}",
        f"- Load average (1/5/15 min) at start: {_load(report.get('load_avg_at_start'))}; "
        f"at end: {_load(report.get('load_avg_at_end'))} "
        "(Linux counts runnable threads: this run's own and other work on the machine; "
        "per system below, taken just before it starts)",
        f"- Versions: Tollway `{versions.get('tollway')}`, LiteLLM `{versions.get('litellm')}` "
        "(`litellm[proxy]`, own venv, 2 workers, no DB, no Redis, retries off, logging ERROR)",
        f"- Mock provider: {plan.get('mock_latency_ms')} ms latency; the raw-asyncio mock "
        "for non-streaming chat, the aiohttp mock for streaming; every system calls the same",
        f"- Run: {'quick smoke run' if plan.get('quick') else 'full run'}, "
        f"{report.get('elapsed_s')} s; {plan.get('step_s')} s measured per step; "
        f"Tollway routers: {plan.get('routers')}",
        "",
        "## Headline: Tollway / LiteLLM",
        "",
        *_headline(report),
        "",
        "## Targets (issue 9)",
        "",
        *_table(
            ["target", "goal", "measured", "verdict"],
            [
                [t["target"], t["goal"], t["measured"], t["verdict"]]
                for t in evaluate(targets(report))
            ],
        ),
        "",
    ]
    for scenario, title in (("sync", "Sync chat completions"), ("stream", "Streaming: TTFT")):
        lines += [f"## {title}", ""]
        what = "TTFT" if scenario == "stream" else "latency"
        for system in SYSTEMS:
            if not _steps(report, system, scenario):
                continue
            data = report["systems"][system]
            idle = data.get("idle_cores")
            lines += [
                f"**{system}** (load average at its start: {_load(data.get('load_avg_at_start'))}"
                + (f"; start-up {data['start_s']} s" if "start_s" in data else "")
                + (f"; idle CPU {sum(idle.values()):.2f} cores" if idle else "")
                + ")",
                "",
            ]
            lines += _table(
                ["rate", "offered/s", "ok/s", "errors", f"{what} p50", "p95", "p99",
                 "added p50 / p95 / p99 (vs mock)", "held"],
                _ladder_rows(report, system, scenario),
            )  # fmt: skip
            lines.append("")
    lines += ["## CPU and memory per process", "", *_cpu_rss_section(report)]
    lines += _profile_section(report)
    lines += _breakdown_section(report)
    lines += ["## Async acceptance (Tollway; LiteLLM: n/a, it has no async endpoint)", ""]
    if tollway.get("async_single"):
        lines += ["Single requests, open loop, `POST /v1/async/chat/completions` -> 202:", ""]
        lines += _table(
            ["rate", "offered/s", "accepted/s", "errors", "p50", "p95", "p99", "held"],
            [row[:7] + row[8:] for row in _ladder_rows(report, "tollway", "async_single")],
        )
        lines.append("")
    bulk = tollway.get("async_bulk")
    if bulk:
        lines += [
            f"Bulk: {_fmt(bulk['requests'])} requests from 256 connections (closed loop): "
            f"**{_fmt(bulk['accepted_per_s'])} accepted/s**, {bulk['errors']} errors, "
            f"latency p50 {bulk['latency']['p50_ms']} / p99 {bulk['latency']['p99_ms']} ms.",
            "",
        ]
    bulk_api = tollway.get("async_bulk_api")
    if bulk_api:
        cpu = bulk_api.get("cpu_ms_per_accepted", {})
        lines += [
            "Bulk endpoint inside the whole stack (bench/bulk_accept.py): "
            f"{_fmt(bulk_api['requests'])} requests in "
            f"calls of {_fmt(bulk_api['items_per_call'])} to `POST "
            f"/v1/async/bulk/chat/completions` from {bulk_api['connections']} connections "
            f"(closed loop): **{_fmt(bulk_api['accepted_per_s'])} accepted/s**, "
            f"{_fmt(bulk_api['accepted'])} queued, {bulk_api['refused_items']} refused, call "
            f"statuses {bulk_api['call_statuses']}; call latency p50 "
            f"{bulk_api['call_latency_ms']['p50_ms']} / p99 "
            f"{bulk_api['call_latency_ms']['p99_ms']} ms; CPU ms per accepted request: "
            f"ingress {cpu.get('ingress')}, kafka {cpu.get('kafka')}; load average "
            f"{bulk_api['load_avg_before']} before, {bulk_api['load_avg_after']} after.",
            "",
        ]
    alone = report.get("bulk_alone")
    if alone and alone.get("status") == "ok":
        cpu = alone.get("cpu_ms_per_accepted", {})
        lines += [
            f"The same endpoint on Kafka and one ingress alone (`bench/bulk_accept.py --start`, "
            f"run by this command after the whole stack stopped; no router executes the "
            f"requests on these 2 cores meanwhile): {_fmt(alone['requests'])} requests, "
            f"**{_fmt(alone['accepted_per_s'])} accepted/s**, {_fmt(alone['accepted'])} queued, "
            f"{alone['refused_items']} refused; call latency p50 "
            f"{alone['call_latency_ms']['p50_ms']} / p99 {alone['call_latency_ms']['p99_ms']} ms; "
            f"CPU ms per accepted request: ingress {cpu.get('ingress')}, kafka "
            f"{cpu.get('kafka')}; load average {alone['load_avg_before']} before. This is the "
            "target's figure: acceptance is the ingress's work, and in the whole stack above "
            "the routers execute the accepted requests on the same cores at the same time.",
            "",
        ]
    elif alone:
        lines += [f"Bulk acceptance alone: {alone.get('status')}.", ""]
    batch = tollway.get("batch")
    lines += ["## Batch end to end (Tollway; LiteLLM: n/a, its batches go to a provider's API)", ""]
    if batch:
        lines += [
            f"{_fmt(batch['lines'])} lines ({_fmt(batch['bytes'])} bytes) through `POST /v1/files` "
            f"+ `POST /v1/batches`: status {batch['status']}, counts {batch['request_counts']}; "
            f"upload {batch['upload_s']} s; all lines enqueued at "
            f"{_fmt(batch['enqueue_lines_per_s'])} lines/s (bulk acceptance); "
            f"completed in {_fmt(batch['end_to_end_s'])} s = "
            f"**{_fmt(batch['end_to_end_rps'])} req/s end to end** (polled every 0.25 s).",
            "",
        ]
        if batch.get("steady_lines_per_s"):
            lines += [
                f"Phases: first line finished after {batch['first_line_s']:.2f} s; "
                f"**{_fmt(batch['steady_lines_per_s'])} lines/s** between 10 % and 90 % of the "
                f"lines; all counted after {batch['all_lines_counted_s']:.2f} s, and the batch "
                f"final {batch['final_after_last_line_s']} s later (output files).",
                "",
            ]
        lines += _batch_cpu(batch.get("cpu_s_per_line"))
    lag = tollway.get("cost_lag")
    lines += ["## Cost lag and budget lag (Tollway; LiteLLM: n/a)", ""]
    if lag:
        lines += [
            f"Cost lag (answer received by the client -> its priced row in ClickHouse "
            f"`tollway.usage`, polled every {lag['poll_interval_ms']} ms), {lag['requests']} "
            f"sync requests at {lag['rate_rps']:.0f}/s: rows seen {lag['rows_seen']}/"
            f"{lag['answered']}; p50 {lag['p50_ms']} ms, p95 {lag['p95_ms']} ms, "
            f"**p99 {lag['p99_ms']} ms**, max {lag['max_ms']} ms.",
            "",
        ]
    budget = report.get("budget_lag")
    if budget:
        lines += [
            f"Budget lag (bench/budget_lag.py, run by this command: {budget.get('status')}): "
            "steady sync load against a small hard budget; `late` = provider calls started "
            "after the settled spend left no room for one more request, and how long after; "
            "`propagation` = crossing -> the first `exceeded` budget-state record read.",
            "",
        ]
        lines += _table(
            ["mode", "requests", "statuses", "late calls", "late p50 / p99 / max (ms)",
             "propagation (ms)", "used % of limit"],
            [[p.get("mode"), p.get("requests"),
              ", ".join(f"{k}: {v}" for k, v in (p.get("statuses") or {}).items()),
              p.get("late_calls"),
              f"{_fmt(p.get('late_p50_ms'))} / {_fmt(p.get('late_p99_ms'))} / "
              f"{_fmt(p.get('late_max_ms'))}",
              p.get("propagation_ms"), p.get("used_pct")] for p in budget_phases(report)],
        )  # fmt: skip
        lines.append("")
    lines += [
        "## How it is measured",
        "",
        "- Load: open loop, constant arrival rate (bench/openloop.py; several generator "
        "processes above 1,000 req/s), ladder 10, 25, 50, then x2 per step; a step breaks "
        "at errors > 1 %, "
        "p99 > 1 s, or < 90 % of the rate actually offered (the generator shares the 2 cores). "
        "Sustained throughput = ok answers/s at the highest step held below the first break.",
        "- Added latency = the system's percentile minus the mock's, measured directly at the "
        "same rate, same generator. Latency is timed from the request's start to the end of "
        "the body; TTFT to the first bytes holding `data:`.",
        "- CPU: utime + stime from /proc/<pid>/stat of each process and its children "
        "(LiteLLM's workers; exited children via cutime/cstime), over the step including its "
        "warm-up, divided by the requests issued. Peak RSS: VmHWM from /proc/<pid>/status.",
        "- Each system runs alone (the mock aside): the mock is measured first, then Tollway's "
        "stack is started, measured and stopped, then LiteLLM's proxy.",
        "",
    ]
    return "\n".join(lines)
