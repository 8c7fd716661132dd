"""Regenerate `workers/cost/catalogue.json` from the reference price facts.

    python -m workers.cost.build_catalogue [--reference PATH] [--out PATH] [--check]

Keeps the chat/responses and embedding models of the providers Tollway speaks
(openai, anthropic, gemini, azure; an embedding model without an output price gets
output "0": it has no output tokens), converts per-token float prices to per-MILLION-token
decimal strings (exactly: via the float's shortest repr, never binary
arithmetic), drops a reasoning price equal to the output price, and adds the
mock provider's fixed test price for `mock-*`. The version is the reference
date plus a hash of the generated models, so regenerating from the same facts
gives the same version and any price change gives a new one. `--check` exits 1
when the checked-in file is out of date.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from workers.cost.catalogue import DEFAULT_CATALOGUE_PATH, parse_catalogue

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE: Final = REPO_ROOT.parent / "shared" / "reference" / "model-prices.json"

SUPPORTED_PROVIDERS: Final = frozenset({"openai", "anthropic", "gemini", "azure"})
CHAT_MODES: Final = frozenset({"chat", "responses"})
EMBEDDING_MODE: Final = "embedding"

#: reference field (USD per token) -> catalogue field (USD per million tokens)
FIELDS: Final = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "output_cost_per_reasoning_token": "reasoning",
    "input_cost_per_token_batches": "batch_input",
    "output_cost_per_token_batches": "batch_output",
    "input_cost_per_token_above_200k_tokens": "input_above_200k",
    "output_cost_per_token_above_200k_tokens": "output_above_200k",
}
LIMITS: Final = ("max_input_tokens", "max_output_tokens")

#: The mock provider's fixed price, so tests and benchmarks know the numbers.
MOCK_PRICE: Final[dict[str, Any]] = {
    "provider": "mock",
    "input": "1",
    "output": "2",
    "cache_read": "0.5",
    "cache_write": "1.25",
    "batch_input": "0.5",
    "batch_output": "1",
    "input_above_200k": "2",
    "output_above_200k": "4",
    "max_input_tokens": 1_000_000,
    "max_output_tokens": 100_000,
}


def per_million(per_token_usd: float | int | str) -> str:
    """A reference per-token price as an exact per-million decimal string."""
    value = Decimal(repr(per_token_usd) if isinstance(per_token_usd, float) else per_token_usd)
    scaled = value.scaleb(6).normalize()
    return f"{scaled:f}"


def convert(name: str, fact: Mapping[str, Any]) -> dict[str, Any] | None:
    """One reference entry as a catalogue entry, or None when Tollway does not price it."""
    provider = fact.get("litellm_provider")
    mode = fact.get("mode")
    if provider not in SUPPORTED_PROVIDERS or (mode not in CHAT_MODES and mode != EMBEDDING_MODE):
        return None
    if mode == EMBEDDING_MODE and "output_cost_per_token" not in fact:
        fact = {**fact, "output_cost_per_token": 0}
    if "input_cost_per_token" not in fact or "output_cost_per_token" not in fact:
        return None
    entry: dict[str, Any] = {"provider": provider}
    for source, target in FIELDS.items():
        if source in fact:
            entry[target] = per_million(fact[source])
    if entry.get("reasoning") == entry["output"]:
        del entry["reasoning"]  # "reasoning if different": equal means no separate rate
    for limit in LIMITS:
        if isinstance(fact.get(limit), int) and fact[limit] > 0:
            entry[limit] = fact[limit]
    return entry


def build(reference: Mapping[str, Any]) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for name in sorted(reference["models"]):
        entry = convert(name, reference["models"][name])
        if entry is not None:
            models[name] = entry
    models["mock-*"] = dict(MOCK_PRICE)
    digest = hashlib.sha256(json.dumps(models, sort_keys=True).encode()).hexdigest()[:10]
    found = re.search(r"\d{4}-\d{2}-\d{2}", str(reference.get("_about", "")))
    date = found.group(0) if found else "undated"
    catalogue = {
        "version": f"{date}.{digest}",
        "source": "shared/reference/model-prices.json (litellm 1.110.2 catalogue, MIT), "
        "providers openai/anthropic/gemini/azure, modes chat/responses/embedding; "
        "mock-* is Tollway's",
        "unit": "USD per 1M tokens",
        "models": models,
    }
    parse_catalogue(catalogue, "generated catalogue")  # never write a file we cannot load
    return catalogue


def render(catalogue: Mapping[str, Any]) -> str:
    return json.dumps(catalogue, indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_CATALOGUE_PATH)
    parser.add_argument("--check", action="store_true", help="fail if --out is out of date")
    args = parser.parse_args(argv)
    text = render(build(json.loads(args.reference.read_text("utf-8"))))
    if args.check:
        current = args.out.read_text("utf-8") if args.out.exists() else ""
        if current != text:
            sys.stderr.write(
                f"{args.out} is out of date: run python -m workers.cost.build_catalogue\n"
            )
            return 1
        return 0
    args.out.write_text(text, "utf-8")
    sys.stdout.write(f"wrote {args.out}: {len(json.loads(text)['models'])} models\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
