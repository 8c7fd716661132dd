"""The memory soak's verdict: RSS series per process in, growth figures and a verdict out. Pure.

Input: for each process, the samples the sampler read from `/proc/<pid>/status` every
10 s (`VmRSS`, the resident set now; `VmHWM`, its peak so far; `RssFile`, the part of
VmRSS that is pages of mapped files; all in kB there). Output: one `ProcessMemory` per
process with the figures the report prints (MB are MiB, 2^20 bytes, as `/proc` counts
them).

What is judged is the memory a process holds: VmRSS minus RssFile (anonymous and shared
memory, where a leak lives). File-backed pages are reported beside it, not judged: they
are pages of the program's own files mapped in (the embedded ClickHouse maps a 555 MB
library and holds ~235 MB of it), which the kernel drops under pressure and which grow
only as more of the code runs. In the fifth soak they were flat in every process after
the first minutes, so both measures gave the same verdicts; the split says which kind
of memory grew (docs/decisions/0025).

The bound (`Bound`), judged only after the warm-up (`warmup_s`: the first 5 minutes, or
the first sixth of a shorter run), when caches, pools and interpreters have filled:

1. growth: the median held memory of the last minute minus its median in the minute
   right after the warm-up must stay below max(25 MB, 10 % of that post-warm-up level);
2. trend: the least-squares slope of held memory over every post-warm-up sample, extrapolated to
   one hour, must stay below 20 MB/h. Judged only when the post-warm-up window is at
   least 10 minutes: over a shorter window the noise of one allocator arena (a few MB)
   extrapolates to tens of MB per hour.

Why these numbers (docs/reliability.md, "Memory soak"): at the soak's 20 requests/s a
leak of about 290 bytes per request is 20 MB/h, so the trend bound catches any per-request
leak of that size or more; the growth bound (medians, so one GC cycle or a merge in
ClickHouse does not decide) catches a step the slope might average away.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

KIB_PER_MIB = 1024
SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    """Seconds since the load started."""
    rss_kb: int
    """VmRSS: resident set now, in KiB."""
    hwm_kb: int
    """VmHWM: the process's peak resident set so far, in KiB."""
    file_kb: int = 0
    """RssFile: the resident pages of mapped files (libraries, data files), in KiB."""

    @property
    def held_kb(self) -> int:
        """What the process holds (the judged figure): VmRSS minus its file-backed pages."""
        return self.rss_kb - self.file_kb


@dataclass(frozen=True, slots=True)
class Bound:
    """What a process may grow after the warm-up (module docstring)."""

    slope_mb_per_h: float = 20.0
    growth_mb: float = 25.0
    growth_fraction: float = 0.10
    level_window_s: float = 60.0
    """The medians are taken over this long right after the warm-up and at the end."""
    min_slope_window_s: float = 600.0
    """The trend is judged only over a post-warm-up window at least this long."""
    max_warmup_s: float = 300.0
    warmup_fraction: float = 1 / 6

    def warmup_s(self, duration_s: float) -> float:
        """The warm-up of a run of `duration_s`: 5 minutes, or its first sixth if shorter."""
        return min(self.max_warmup_s, duration_s * self.warmup_fraction)

    def allowed_growth_mb(self, warm_mb: float) -> float:
        return max(self.growth_mb, self.growth_fraction * warm_mb)


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    """One process's figures in MB (MiB) and its verdict."""

    name: str
    judged: bool
    """False for processes reported for information only (the broker's JVM, the driver)."""
    samples: int
    start_mb: float
    warm_mb: float
    end_mb: float
    peak_mb: float
    """The largest VmHWM seen: the peak resident set over the whole run."""
    file_start_mb: float
    file_end_mb: float
    """RssFile at the first and the last sample (reported, not judged)."""
    slope_mb_per_h: float | None
    """Least-squares slope after the warm-up; None when there are fewer than 2 samples."""
    slope_judged: bool
    growth_mb: float
    allowed_growth_mb: float
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def mb(kb: float) -> float:
    return kb / KIB_PER_MIB


def least_squares_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Slope of the least-squares line through (x, y) points; None if x does not vary."""
    if len(points) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def _median_mb(samples: Sequence[Sample]) -> float:
    return mb(statistics.median(s.held_kb for s in samples))


def assess(
    name: str,
    samples: Sequence[Sample],
    duration_s: float,
    bound: Bound,
    *,
    judged: bool = True,
) -> ProcessMemory:
    """The figures and verdict of one process over a run of `duration_s` seconds.

    `samples` in time order. start: the first sample; warm: the median over the
    `level_window_s` after the warm-up; end: the median over the last `level_window_s`
    of samples; peak: the largest VmHWM. With no sample after the warm-up, warm and end
    are the last sample and the process is reported as not assessable (a problem).
    """
    assert samples, f"{name}: no samples"
    warmup = bound.warmup_s(duration_s)
    after = [s for s in samples if s.at_s >= warmup]
    problems: list[str] = []
    if not after:
        after = [samples[-1]]
        problems.append("no sample after the warm-up")
    warm = [s for s in after if s.at_s < after[0].at_s + bound.level_window_s]
    last_at = after[-1].at_s
    end = [s for s in after if s.at_s > last_at - bound.level_window_s]
    warm_mb, end_mb = _median_mb(warm), _median_mb(end)
    slope_per_s = least_squares_slope([(s.at_s, mb(s.held_kb)) for s in after])
    slope = None if slope_per_s is None else slope_per_s * SECONDS_PER_HOUR
    slope_judged = slope is not None and last_at - after[0].at_s >= bound.min_slope_window_s
    growth = end_mb - warm_mb
    allowed = bound.allowed_growth_mb(warm_mb)
    if judged and growth >= allowed:
        problems.append(f"grew {growth:.1f} MB after the warm-up (bound {allowed:.1f} MB)")
    if judged and slope_judged and slope is not None and slope >= bound.slope_mb_per_h:
        problems.append(f"trend {slope:.1f} MB/h (bound {bound.slope_mb_per_h:g} MB/h)")
    return ProcessMemory(
        name=name,
        judged=judged,
        samples=len(samples),
        start_mb=mb(samples[0].held_kb),
        warm_mb=warm_mb,
        end_mb=end_mb,
        peak_mb=mb(max(s.hwm_kb for s in samples)),
        file_start_mb=mb(samples[0].file_kb),
        file_end_mb=mb(samples[-1].file_kb),
        slope_mb_per_h=slope,
        slope_judged=slope_judged,
        growth_mb=growth,
        allowed_growth_mb=allowed,
        problems=tuple(problems) if judged else (),
    )


HEADER = (
    "process", "start", "warm", "end", "peak", "growth", "bound", "slope MB/h", "file-backed",
    "verdict",
)  # fmt: skip


def _row(p: ProcessMemory) -> tuple[str, ...]:
    if p.slope_mb_per_h is None:
        slope = "n/a"
    else:
        slope = f"{p.slope_mb_per_h:+.1f}" + ("" if p.slope_judged else " (not judged)")
    verdict = "ok" if p.ok else "OVER: " + "; ".join(p.problems)
    if not p.judged:
        verdict = "info only"
    return (
        p.name,
        f"{p.start_mb:.1f}",
        f"{p.warm_mb:.1f}",
        f"{p.end_mb:.1f}",
        f"{p.peak_mb:.1f}",
        f"{p.growth_mb:+.1f}",
        f"{p.allowed_growth_mb:.1f}" if p.judged else "-",
        slope,
        f"{p.file_start_mb:.0f}->{p.file_end_mb:.0f}",
        verdict,
    )


def table_text(processes: Sequence[ProcessMemory]) -> str:
    """A fixed-width table (MB = MiB): held memory at start/warm/end, peak VmRSS, growth vs
    its bound, slope, file-backed pages at start and end."""
    rows = [HEADER, *(_row(p) for p in processes)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]

    def line(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1], strict=True)]
        return "  ".join([*cells, row[-1]]).rstrip()

    return "\n".join(line(r) for r in rows)


def table_markdown(processes: Sequence[ProcessMemory]) -> str:
    """The same table in Markdown (for docs/reliability.md)."""
    head = "| " + " | ".join(HEADER) + " |"
    rule = "|" + "|".join(["---"] + ["---:"] * (len(HEADER) - 2) + ["---"]) + "|"
    body = ["| " + " | ".join(_row(p)) + " |" for p in processes]
    return "\n".join([head, rule, *body])
