"""Sample the resident set of named processes from /proc every few seconds (Linux).

Each tick reads `/proc/<pid>/status` of every target and keeps `VmRSS`, `VmHWM` and
`RssFile` (KiB) as a `memory.Sample`. Targets are asked for each tick (`targets()` -> name ->
pid), so the sampler follows whatever the caller runs; a target whose pid changes or
whose process is gone is recorded in `exits` (a soak without faults has none: each is a
finding). Reading /proc costs microseconds: at one tick per 10 s it does not disturb
what it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.soak.memory import Sample

PROC = Path("/proc")


def parse_status(text: str) -> tuple[int, int, int] | None:
    """(VmRSS, VmHWM, RssFile) in KiB from a /proc/<pid>/status text; None for a zombie
    (no VmRSS). RssFile is 0 where the kernel does not report it."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssFile"):
            found[key] = int(value.split()[0])
    if "VmRSS" not in found:
        return None
    return found["VmRSS"], found.get("VmHWM", found["VmRSS"]), found.get("RssFile", 0)


def read_status(pid: int, proc: Path = PROC) -> tuple[int, int, int] | None:
    try:
        text = (proc / str(pid) / "status").read_text()
    except OSError:  # gone between ticks
        return None
    return parse_status(text)


def child_pids(pid: int, proc: Path = PROC) -> list[int]:
    """Direct children of `pid` (every thread's `children` list; empty if gone)."""
    found: list[int] = []
    for children in (proc / str(pid) / "task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in children.read_text().split()]
    return sorted(set(found))


@dataclass
class RssSampler:
    targets: Callable[[], Mapping[str, int | None]]
    """name -> pid now (None: not running)."""
    interval_s: float = 10.0
    started: float = field(default_factory=time.monotonic)
    series: dict[str, list[Sample]] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    exits: list[str] = field(default_factory=list)
    """`name (pid) at t+Ns: what`, one per target that stopped or changed pid."""
    log_path: Path | None = None
    """Every sample is also appended here as a JSON line (kept if the run is cut short)."""

    def tick(self) -> None:
        at_s = round(time.monotonic() - self.started, 1)
        for name, pid in self.targets().items():
            known = self.pids.get(name)
            status = None if pid is None else read_status(pid)
            if pid is None or status is None:
                self._exited(name, known, at_s, "not running")
                continue
            if known is not None and pid != known:
                self._exited(name, known, at_s, f"replaced by pid {pid}")
            self.pids[name] = pid
            self.series.setdefault(name, []).append(Sample(at_s, *status))
            if self.log_path is not None:
                line = {"at_s": at_s, "name": name, "pid": pid, "rss_kb": status[0],
                        "hwm_kb": status[1], "file_kb": status[2]}  # fmt: skip
                with self.log_path.open("a", encoding="utf-8") as log:
                    log.write(json.dumps(line) + "\n")

    def _exited(self, name: str, pid: int | None, at_s: float, what: str) -> None:
        """Record once that the process `pid` of `name` stopped being sampled."""
        if pid is None:
            return
        tag = f"{name} ({pid})"
        if not any(e.startswith(tag) for e in self.exits):
            self.exits.append(f"{tag} at t+{at_s:.0f}s: {what}")

    async def run(self, stop: asyncio.Event) -> None:
        """Tick now and every `interval_s` until `stop` is set, then once more."""
        while not stop.is_set():
            self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
        self.tick()
