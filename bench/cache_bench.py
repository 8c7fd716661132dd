"""Response cache figures (issue 8): threshold evaluation, embedding cost, lookup p99, hit rate.

No processes, no network: the cache's own classes in this process.

    eval     precision and recall of semantic matching on bench/data/cache_pairs.jsonl
             (labelled paraphrase / non-paraphrase pairs) at thresholds 0.80-0.95, scored
             as the cache decides: a pair can only match when `decide` gives both the same
             semantic scope (same parameters, same numbers), then by cosine >= threshold
    embed    ms per short prompt of all-MiniLM-L6-v2 (the set's prompts, one at a time,
             as a router embeds them): p50/p99 wall and CPU (thread time); `--embedder
             reference` times the float32 numpy pass instead of the served model
    fidelity the served (8-bit, onnxruntime) embedding of every text of the set against
             the float32 reference: per-text cosine min / p1 / mean (0020: >= 0.99)
    lookup   semantic lookup at 100k entries in ONE scope (the worst case): p50/p99 wall
             and CPU per lookup, and agreement with an exact flat scan at the threshold
    replay   a replayed workload with repeats through ResponseCache: requests drawn from
             the set's prompts (Zipf over equivalence classes, a random wording each time);
             exact, semantic and total hit rates, and false hits (an answer served to a
             prompt of another class)

    .venv/bin/python bench/cache_bench.py [--phases eval,embed,fidelity,lookup,replay]
        [--entries N] [--embedder served|reference]

Writes bench/out/cache_bench.json. On a shared machine prefer the CPU columns: the
wall-clock p99 includes time the process spent waiting for a core.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in a router (workers/cache/__init__)

import numpy as np  # after the thread setting

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.records import ZERO_USAGE  # noqa: E402
from workers.cache.cache import ResponseCache  # noqa: E402
from workers.cache.canonical import CachePolicy, decide, guard_refuses  # noqa: E402
from workers.cache.minilm import MiniLM  # noqa: E402
from workers.cache.minilm_reference import ReferenceMiniLM  # noqa: E402
from workers.cache.semantic import ScopeIndex  # noqa: E402
from workers.cache.settings import DEFAULT_THRESHOLD  # noqa: E402
from workers.cache.store import CachedAnswer, ExactStore  # noqa: E402

PAIRS = ROOT / "bench" / "data" / "cache_pairs.jsonl"
OUT = ROOT / "bench" / "out" / "cache_bench.json"
THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(16)]


def load_pairs(path: Path = PAIRS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def chat(user: str, system: str | None = None) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return {"model": "gpt-4o-mini", "messages": messages, "temperature": 0}


Model = MiniLM | ReferenceMiniLM


def score_pairs(
    model: Model,
    rows: Iterable[dict[str, Any]],
    policy: CachePolicy,
    *,
    guard: bool = True,
    vectors: dict[str, Any] | None = None,
) -> list[tuple[float | None, bool, str]]:
    """(cosine or None when the cache would never match them, label, kind) per pair.
    `vectors`: a memo of embeddings by text, shared between calls."""
    vectors = {} if vectors is None else vectors

    def embed(text: str) -> Any:
        if text not in vectors:
            vectors[text] = model.embed(text)[0]
        return vectors[text]

    scored: list[tuple[float | None, bool, str]] = []
    for row in rows:
        a = decide(chat(row["a"], row.get("system_a")), team_id="t", key_id=None,
                   model="m", metadata={}, policy=policy)  # fmt: skip
        b = decide(chat(row["b"], row.get("system_b")), team_id="t", key_id=None,
                   model="m", metadata={}, policy=policy)  # fmt: skip
        score: float | None = None
        comparable = a.semantic_scope is not None and a.semantic_scope == b.semantic_scope
        if comparable and not (guard and guard_refuses(a.semantic_guard, b.semantic_guard)):
            assert a.semantic_text is not None
            assert b.semantic_text is not None
            score = float(embed(a.semantic_text) @ embed(b.semantic_text))
        scored.append((score, bool(row["paraphrase"]), row["kind"]))
    return scored


def precision_recall(
    scored: list[tuple[float | None, bool, str]], threshold: float
) -> dict[str, float | int]:
    tp = sum(1 for s, y, _ in scored if y and s is not None and s >= threshold)
    fp = sum(1 for s, y, _ in scored if not y and s is not None and s >= threshold)
    fn = sum(1 for s, y, _ in scored if y and (s is None or s < threshold))
    return {
        "threshold": threshold,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def phase_eval(model: Model) -> dict[str, Any]:
    rows = load_pairs()
    out: dict[str, Any] = {"pairs": len(rows), "positives": sum(r["paraphrase"] for r in rows)}
    variants = {
        "default: system_and_last_user, numbers + word-order guards": (CachePolicy(), True),
        "numbers guard only": (CachePolicy(), False),
        "no guards (embedding alone)": (CachePolicy(semantic_numbers_must_match=False), False),
        "last_user, both guards": (CachePolicy(semantic_text="last_user"), True),
    }
    vectors: dict[str, Any] = {}
    for name, (policy, guard) in variants.items():
        scored = score_pairs(model, rows, policy, guard=guard, vectors=vectors)
        out[name] = [precision_recall(scored, t) for t in THRESHOLDS]
        print(f"\n{name}: {len(rows)} pairs, {out['positives']} paraphrases")
        print("threshold  precision  recall   tp  fp  fn")
        for r in out[name]:
            print(f"  {r['threshold']:.2f}     {r['precision']:.3f}    {r['recall']:.3f}  "
                  f"{r['tp']:3d} {r['fp']:3d} {r['fn']:3d}")  # fmt: skip
    return out


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.array(samples_ms)
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
    }


def phase_embed(model: Model, rounds: int = 3) -> dict[str, Any]:
    prompts = sorted({r[k] for r in load_pairs() for k in ("a", "b")})
    for p in prompts[:20]:
        model.embed(p)  # warm caches
    wall: list[float] = []
    cpu: list[float] = []
    tokens: list[int] = []
    for _ in range(rounds):
        for p in prompts:
            t0, c0 = time.perf_counter(), time.thread_time()
            model.embed(p)
            cpu.append((time.thread_time() - c0) * 1000)
            wall.append((time.perf_counter() - t0) * 1000)
    tokens = [len(model.tokenizer.encode(p, 256).ids) for p in prompts]
    out: dict[str, Any] = {
        "embedder": type(model).__name__,
        "prompts": len(prompts),
        "calls": len(wall),
        "tokens_p50": float(np.percentile(tokens, 50)),
        "tokens_max": max(tokens),
        "wall": _percentiles(wall),
        "cpu": _percentiles(cpu),
    }
    print(f"\nembed ({out['embedder']}): {len(prompts)} prompts x {rounds}, "
          f"{out['tokens_p50']:.0f} tokens median "
          f"(max {out['tokens_max']}): wall p50 {out['wall']['p50_ms']:.2f} ms p99 "
          f"{out['wall']['p99_ms']:.2f} ms; CPU p50 {out['cpu']['p50_ms']:.2f} ms p99 "
          f"{out['cpu']['p99_ms']:.2f} ms")  # fmt: skip
    return out


def phase_fidelity(model: Model) -> dict[str, Any]:
    """Cosine of `model`'s embedding to the float32 reference's, per text of the set
    (prompts and system prompts, as the cache embeds them alone)."""
    rows = load_pairs()
    texts = sorted({r[k] for r in rows for k in ("a", "b", "system_a", "system_b") if r.get(k)})
    reference = ReferenceMiniLM.load()
    cosines = np.array([float(model.embed(t)[0] @ reference.embed(t)[0]) for t in texts])
    worst = int(np.argmin(cosines))
    out: dict[str, Any] = {
        "embedder": type(model).__name__,
        "texts": len(texts),
        "cos_min": float(cosines.min()),
        "cos_p1": float(np.percentile(cosines, 1)),
        "cos_mean": float(cosines.mean()),
        "below_0_99": int((cosines < 0.99).sum()),
        "worst_text": texts[worst],
    }
    print(f"\nfidelity ({out['embedder']} vs float32 reference): {len(texts)} texts, cosine "
          f"min {out['cos_min']:.5f} p1 {out['cos_p1']:.5f} mean {out['cos_mean']:.5f}; "
          f"{out['below_0_99']} below 0.99; worst {texts[worst]!r}")  # fmt: skip
    return out


def _unit(x: Any) -> Any:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def phase_lookup(model: Model, entries: int, queries: int = 2_000) -> dict[str, Any]:
    """100k vectors shaped like prompt embeddings: real embeddings of the set's prompts plus
    synthetic ones around 5,000 topic centres (MiniLM embeddings of a team's traffic are
    clustered, not uniform); queries are near-duplicates of stored vectors (the case that
    must be found) and fresh vectors (the case that must not cost more)."""
    rng = np.random.default_rng(8)
    real = np.stack([model.embed(p)[0] for p in sorted({r["a"] for r in load_pairs()})])
    centres = _unit(rng.standard_normal((5_000, real.shape[1])))
    labels = rng.integers(0, len(centres), entries - len(real))
    synthetic = _unit(centres[labels] + 0.06 * rng.standard_normal((len(labels), real.shape[1])))
    data = np.concatenate([real, synthetic]).astype(np.float32)
    index = ScopeIndex(real.shape[1])
    flat = ScopeIndex(real.shape[1], ivf_min_entries=10**9)
    t0 = time.perf_counter()
    for i, v in enumerate(data):
        index.add(str(i), v)
    build_s = time.perf_counter() - t0
    for i, v in enumerate(data):
        flat.add(str(i), v)
    picks = rng.integers(0, entries, queries // 2)
    near = _unit(data[picks] + 0.025 * rng.standard_normal((len(picks), data.shape[1])))
    fresh = _unit(rng.standard_normal((queries - len(picks), data.shape[1])))
    wall: list[float] = []
    cpu: list[float] = []
    found = agree = flat_found = 0
    for q in np.concatenate([near, fresh]):
        t, c = time.perf_counter(), time.thread_time()
        match = index.search(q, DEFAULT_THRESHOLD)
        cpu.append((time.thread_time() - c) * 1000)
        wall.append((time.perf_counter() - t) * 1000)
        truth = flat.search(q, DEFAULT_THRESHOLD)
        found += match is not None
        flat_found += truth is not None
        agree += (match is None) == (truth is None) and (
            match is None or truth is None or match.key == truth.key
        )
    flat_wall: list[float] = []
    for q in near[:200]:
        t = time.perf_counter()
        flat.search(q, DEFAULT_THRESHOLD)
        flat_wall.append((time.perf_counter() - t) * 1000)
    out: dict[str, Any] = {
        "entries": entries,
        "queries": queries,
        "lists": len(index.buckets),
        "probes": index.probes,
        "build_s": build_s,
        "wall": _percentiles(wall),
        "cpu": _percentiles(cpu),
        "flat_scan_wall": _percentiles(flat_wall),
        "found": found,
        "flat_found": flat_found,
        "agreement_with_flat": agree / queries,
    }
    print(f"\nlookup: {entries} entries in one scope, {len(index.buckets)} lists, "
          f"{index.probes} probes: wall p50 {out['wall']['p50_ms']:.3f} ms p99 "
          f"{out['wall']['p99_ms']:.3f} ms; CPU p50 {out['cpu']['p50_ms']:.3f} ms p99 "
          f"{out['cpu']['p99_ms']:.3f} ms; flat scan p50 {out['flat_scan_wall']['p50_ms']:.1f} "
          f"ms; matches {found} vs flat {flat_found}, "
          f"agreement {out['agreement_with_flat']:.4f}")  # fmt: skip
    return out


def _classes(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Prompt wordings grouped into equivalence classes (paraphrase pairs joined)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in rows:
        if r.get("system_a") or r.get("system_b"):
            continue
        find(r["a"])
        find(r["b"])
        if r["paraphrase"]:
            parent[find(r["a"])] = find(r["b"])
    groups: dict[str, list[str]] = {}
    for x in parent:
        groups.setdefault(find(x), []).append(x)
    return sorted(sorted(g) for g in groups.values())


def phase_replay(model: Model, requests: int = 3_000, zipf_s: float = 1.1) -> dict[str, Any]:
    classes = _classes(load_pairs())
    rng = random.Random(8)
    weights = [1 / (rank + 1) ** zipf_s for rank in range(len(classes))]
    order = list(range(len(classes)))
    rng.shuffle(order)
    policy = CachePolicy()
    cache = ResponseCache(
        ExactStore(max_entries=100_000, max_bytes=512 * 1024 * 1024),
        embedder=model,
        threshold=DEFAULT_THRESHOLD,
    )
    class_of = {text: i for i, group in enumerate(classes) for text in group}
    counts = {"hit": 0, "semantic-hit": 0, "miss": 0, "false_hits": 0}
    now = 1_700_000_000_000
    for _ in range(requests):
        cls = order[rng.choices(range(len(classes)), weights)[0]]
        text = rng.choice(classes[cls])
        decision = decide(chat(text), team_id="t", key_id=None, model="m", metadata={},
                          policy=policy)  # fmt: skip
        lookup = cache.lookup(decision, now)
        if lookup.answer is not None:
            assert lookup.kind is not None
            counts[lookup.kind] += 1
            counts["false_hits"] += class_of[lookup.answer.body.decode()] != cls
        else:
            counts["miss"] += 1
            vector = lookup.vector
            cache.admit(
                CachedAnswer(
                    key=decision.key, scope=decision.scope, model="m", body=text.encode(),
                    provider="openai", upstream_model="m", served_model="m",
                    usage=ZERO_USAGE.copy(), created_at_ms=now, expires_at_ms=now + 3_600_000,
                    semantic_scope=decision.semantic_scope if vector is not None else None,
                    embedding=vector.tobytes() if vector is not None else None,
                    embedder=model.name, semantic_guard=decision.semantic_guard,
                ),
                now,
            )  # fmt: skip
        now += 100
    out = {
        "requests": requests,
        "classes": len(classes),
        "wordings": sum(len(g) for g in classes),
        "zipf_s": zipf_s,
        **counts,
        "exact_hit_rate": counts["hit"] / requests,
        "semantic_hit_rate": counts["semantic-hit"] / requests,
        "hit_rate": (counts["hit"] + counts["semantic-hit"]) / requests,
        "false_hit_rate": counts["false_hits"] / requests,
    }
    print(f"\nreplay: {requests} requests over {len(classes)} classes / {out['wordings']} "
          f"wordings (Zipf s={zipf_s}): exact {out['exact_hit_rate']:.1%}, semantic "
          f"{out['semantic_hit_rate']:.1%}, total {out['hit_rate']:.1%}; false hits "
          f"{counts['false_hits']} ({out['false_hit_rate']:.2%})")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phases", default="eval,embed,lookup,replay")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument(
        "--embedder",
        choices=("served", "reference"),
        default="served",
        help="served: the router's model (minilm.py); reference: the float32 numpy pass",
    )
    args = parser.parse_args()
    phases = args.phases.split(",")
    model: Model = MiniLM.load() if args.embedder == "served" else ReferenceMiniLM.load()
    results: dict[str, Any] = {"load_avg": os.getloadavg(), "cpus": os.cpu_count()}
    if "eval" in phases:
        results["eval"] = phase_eval(model)
    if "embed" in phases:
        results["embed"] = phase_embed(model)
    if "fidelity" in phases:
        results["fidelity"] = phase_fidelity(model)
    if "lookup" in phases:
        results["lookup"] = phase_lookup(model, args.entries)
    if "replay" in phases:
        results["replay"] = phase_replay(model)
    results["load_avg_after"] = os.getloadavg()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(f"\nload average {results['load_avg']} -> {results['load_avg_after']}; wrote {OUT}")


if __name__ == "__main__":
    main()
