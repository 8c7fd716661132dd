"""Before/after on a noisy machine: the sync benchmark over several checkouts, interleaved.

Each repetition runs `bench/sync_throughput.py --tree T` once per tree, in an
order that rotates between repetitions, so slow spells of a shared machine hit
every tree alike. The report gives, per tree, the median over repetitions of
throughput, latency and CPU ms per request of each process, and each figure's
ratio to the first tree (the baseline). CPU per request is the steadiest figure
on a shared machine: contention stretches wall time far more than CPU time.

    git archive <commit> | tar -x -C /tmp/before   # a checkout to compare against
    python bench/ab_trees.py /tmp/before . [--reps 3] [--duration-s 10] [--rate-rps 200]

Writes bench/out/ab_trees.json (`--out`); every sync_throughput.py option after
`--` is passed through (e.g. `-- --mock aiohttp`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def run_once(tree: str, out: Path, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    argv = [
        sys.executable, str(BENCH / "sync_throughput.py"), "--tree", tree,
        "--phases", args.phases, "--rounds", "1", "--duration-s", str(args.duration_s),
        "--rate-rps", str(args.rate_rps), "--out", str(out), *extra,
    ]  # fmt: skip
    if args.core_only:
        argv.append("--core-only")
    log = out.with_suffix(".log")
    for attempt in (1, 2):  # a busy shared machine sometimes fails a start-up: once more
        with log.open("w") as sink:
            done = subprocess.run(argv, check=False, stdout=sink, stderr=subprocess.STDOUT)
        if done.returncode == 0:
            break
        print(f"{tree}: run failed (attempt {attempt}); see {log}", file=sys.stderr)
    else:
        raise RuntimeError(f"sync_throughput.py failed twice for {tree}; see {log}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def figures(report: dict[str, Any]) -> dict[str, float]:
    """The flat figures compared between trees, from one sync_throughput report."""
    flat: dict[str, float] = {}
    for phase, summary in report["summary"].items():
        flat[f"{phase}.gateway_rps"] = summary["gateway"]["throughput_rps"]
        for key in ("p50_ms", "p99_ms"):
            flat[f"{phase}.gateway_{key}"] = summary["gateway"][key]
            flat[f"{phase}.added_{key}"] = summary["added_ms"][key]
        for process, cpu_ms in summary["gateway_cpu_ms_per_request"].items():
            if cpu_ms or process in ("router-1", "ingress", "kafka"):
                flat[f"{phase}.cpu_ms.{process}"] = cpu_ms
        core = ("router-1", "ingress", "kafka")
        flat[f"{phase}.cpu_ms.router+ingress+kafka"] = round(
            sum(summary["gateway_cpu_ms_per_request"].get(p, 0.0) for p in core), 3
        )
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("trees", nargs="+", help="checkouts; the first is the baseline")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--phases", default="throughput,rate")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--rate-rps", type=float, default=200.0)
    parser.add_argument("--core-only", action="store_true", default=True)
    parser.add_argument("--full-stack", dest="core_only", action="store_false")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "ab_trees.json")
    parser.add_argument("--work-dir", type=Path, default=BENCH.parent / ".tollway" / "ab")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    trees = [str(Path(t).resolve()) for t in args.trees]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    per_tree: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    for rep in range(args.reps):
        order = trees[rep % len(trees) :] + trees[: rep % len(trees)]
        for index, tree in enumerate(order):
            out = args.work_dir / f"rep{rep}-{trees.index(tree)}.json"
            per_tree[tree].append(figures(run_once(tree, out, args, extra)))
            print(f"rep {rep + 1}/{args.reps} tree {index + 1}/{len(trees)} done", file=sys.stderr)

    medians = {
        tree: {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        for tree, runs in per_tree.items()
    }
    base = medians[trees[0]]
    report = {
        "settings": {**vars(args), "out": str(args.out), "work_dir": str(args.work_dir)},
        "medians": medians,
        "ratio_to_baseline": {
            tree: {k: round(v / base[k], 3) for k, v in m.items() if base.get(k)}
            for tree, m in medians.items()
        },
        "runs": per_tree,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(
        json.dumps({"medians": medians, "ratio_to_baseline": report["ratio_to_baseline"]}, indent=2)
    )


if __name__ == "__main__":
    main()
