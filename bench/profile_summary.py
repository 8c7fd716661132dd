"""Summarise py-spy's collapsed stacks (`--format raw`) into self and inclusive time per function.

Input: lines `frame;frame;...;leaf COUNT`, each frame `function (path:line)`, as
`py-spy record --format raw` writes them (idle samples are excluded by py-spy
unless --idle is given, so the samples approximate CPU time; with --native the
waits in epoll are dropped here). Output: the top
functions by self time (samples whose leaf is that function; C code called from
Python is charged to its Python caller) and by inclusive time (samples with the
function anywhere on the stack), as fractions of all samples. Line numbers are
dropped so a function is one row. Site-packages paths are shortened to the
package path.

    python bench/profile_summary.py FILE.raw [--top 25]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<path>.*?)(?::\d+)?\)$")
IDLE_LEAVES = frozenset({"epoll_wait", "epoll_pwait", "epoll_pwait2", "select", "poll"})
"""Leaf C functions of a thread waiting for I/O: with --native py-spy reports these
samples as active, so they are dropped here."""


def frame_name(frame: str) -> str:
    """`func (short/path.py)` for one raw frame; unknown shapes are kept as they are."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["path"]
    for marker in ("site-packages/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


def summarize(lines: list[str], top: int = 25) -> dict[str, object]:
    """Self and inclusive shares of the samples, the `top` functions of each."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames or frames[-1].split(" (", 1)[0] in IDLE_LEAVES:
            continue
        total += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl_counts[name] += count

    def rows(counter: Counter[str]) -> list[dict[str, object]]:
        return [
            {"function": name, "samples": n, "share": round(n / total, 4)}
            for name, n in counter.most_common(top)
        ]

    return {"samples": total, "self": rows(self_counts), "inclusive": rows(incl_counts)}


def render(name: str, summary: dict[str, object]) -> str:
    """A plain-text table of one process's summary."""
    out = [f"== {name}: {summary['samples']} samples (py-spy, non-idle) =="]
    for kind in ("self", "inclusive"):
        out.append(f"-- top {kind} --")
        rows = summary[kind]
        assert isinstance(rows, list)
        out.extend(f"{row['share'] * 100:6.2f}%  {row['function']}" for row in rows)
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    summary = summarize(args.raw.read_text().splitlines(), args.top)
    print(json.dumps(summary, indent=2) if args.json else render(args.raw.stem, summary))


if __name__ == "__main__":
    main()
