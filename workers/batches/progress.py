"""The progress line of `tollway batch submit --wait`. Pure: counts and times are inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Sample:
    at_s: float
    done: int


def progress_line(batch: dict[str, Any], first: Sample | None, now_s: float) -> str:
    """`batch_x in_progress 1,200/50,000 (1,190 ok, 10 failed) 850/s ETA 0:57`.

    Rate is measured from `first` (the first sample that had lines done), so the time
    spent validating does not count; ETA appears once a rate is known.
    """
    counts = batch.get("request_counts") or {}
    total = int(counts.get("total", 0))
    ok = int(counts.get("completed", 0))
    failed = int(counts.get("failed", 0))
    done = ok + failed
    parts = [
        f"{batch.get('id', '?')} {batch.get('status', '?')}",
        f"{done:,}/{total:,} ({ok:,} ok, {failed:,} failed)",
    ]
    if first is not None and now_s > first.at_s and done > first.done:
        rate = (done - first.done) / (now_s - first.at_s)
        parts.append(f"{rate:,.0f}/s")
        if total > done and batch.get("status") == "in_progress":
            eta = int((total - done) / rate)
            parts.append(f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")
    return "  ".join(parts)
