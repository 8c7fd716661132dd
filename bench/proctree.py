"""CPU seconds and peak RSS of named processes and their children, from /proc (Linux).

CPU: utime + stime of /proc/<pid>/stat, in seconds, summed over the process and
every live descendant (LiteLLM's proxy forks its uvicorn workers; a worker's CPU
must count), plus cutime + cstime (children that already exited and were waited
for). Peak RSS: VmHWM of /proc/<pid>/status, per process, in MB (MiB), reported
for the root and each descendant separately (a worker's peak is its own).

The parsers take the files' text, so the arithmetic is tested without /proc.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


def parse_stat(text: str) -> tuple[int, float, float]:
    """(ppid, own CPU seconds, waited-for children's CPU seconds) of one stat line."""
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    ppid = int(fields[1])
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    children = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return ppid, own, children


def parse_vmhwm_mb(status_text: str) -> float:
    """VmHWM (peak resident set) in MiB; 0.0 when absent (a zombie)."""
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def descendants(root: int, parents: Mapping[int, int]) -> list[int]:
    """Every pid below `root` in a {pid: ppid} table, breadth first."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    frontier = [root]
    while frontier:
        nxt: list[int] = []
        for pid in frontier:
            for child in sorted(children.get(pid, [])):
                found.append(child)
                nxt.append(child)
        frontier = nxt
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:  # the process exited between listing and reading
        return None


def parent_table() -> dict[int, int]:
    table: dict[int, int] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            text = _read(entry / "stat")
            if text is not None:
                table[int(entry.name)] = parse_stat(text)[0]
    return table


def tree_cpu_s(root: int) -> float:
    """CPU seconds of `root`, its live descendants and the children each has waited for."""
    total = 0.0
    for pid in [root, *descendants(root, parent_table())]:
        text = _read(PROC / str(pid) / "stat")
        if text is not None:
            _, own, waited = parse_stat(text)
            total += own + waited
    return total


def tree_peak_rss_mb(root: int, name: str) -> dict[str, float]:
    """{name: MiB, name/worker-<pid>: MiB, ...}: VmHWM of the root and each descendant."""
    out: dict[str, float] = {}
    for pid in [root, *descendants(root, parent_table())]:
        text = _read(PROC / str(pid) / "status")
        if text is None:
            continue
        label = name if pid == root else f"{name}/child-{pid}"
        out[label] = round(parse_vmhwm_mb(text), 1)
    return out
