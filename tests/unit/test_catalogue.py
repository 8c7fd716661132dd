"""workers/cost/catalogue.py and build_catalogue.py: the price catalogue and its overrides."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import pytest

from workers.cost import build_catalogue
from workers.cost.catalogue import (
    DEFAULT_CATALOGUE_PATH,
    CatalogueError,
    load_catalogue,
    load_overrides,
)
from workers.cost.pricing import Price

CATALOGUE: Final = load_catalogue()
RAW: Final[dict[str, Any]] = json.loads(DEFAULT_CATALOGUE_PATH.read_text("utf-8"))
RATE_FIELDS: Final = (
    "input", "output", "cache_read", "cache_write", "reasoning", "batch_input", "batch_output",
    "input_above_200k", "output_above_200k",
)  # fmt: skip


def m(value: str) -> Decimal:
    """Per-million USD -> per-token USD, as the catalogue normalises."""
    return Decimal(value).scaleb(-6)


def test_the_checked_in_catalogue_is_versioned_and_loads() -> None:
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}\.[0-9a-f]{10}", CATALOGUE.version)
    assert len(CATALOGUE) > 100
    assert RAW["unit"] == "USD per 1M tokens"


@pytest.mark.parametrize(
    ("model", "input_", "output", "cache_read", "batch_input", "batch_output", "context"),
    [
        ("gpt-4o-mini", "0.15", "0.6", "0.075", "0.075", "0.3", 128_000),
        ("gpt-4o", "2.5", "10", "1.25", "1.25", "5", 128_000),
        ("gpt-4.1-mini", "0.4", "1.6", "0.1", "0.2", "0.8", 1_047_576),
        ("gpt-4.1", "2", "8", "0.5", "1", "4", 1_047_576),
    ],
)
def test_the_default_models_carry_the_reference_prices(
    model: str,
    input_: str,
    output: str,
    cache_read: str,
    batch_input: str,
    batch_output: str,
    context: int,
) -> None:
    price = CATALOGUE.lookup("openai", model)
    assert price is not None
    assert (price.input, price.output, price.cache_read) == (m(input_), m(output), m(cache_read))
    assert (price.batch_input, price.batch_output) == (m(batch_input), m(batch_output))
    assert price.max_input_tokens == context


def test_every_mock_model_has_the_fixed_test_price() -> None:
    for model in ("mock-fast", "mock-slow-500", "mock-429-2", "mock-"):
        assert CATALOGUE.lookup("openai", model) == Price.per_million(
            input="1",
            output="2",
            cache_read="0.5",
            cache_write="1.25",
            batch_input="0.5",
            batch_output="1",
            input_long="2",
            output_long="4",
            max_input_tokens=1_000_000,
            max_output_tokens=100_000,
        )


@pytest.mark.parametrize(
    ("provider", "model", "input_"),
    [
        ("anthropic", "claude-sonnet-4-5", "3"),  # bare name
        ("gemini", "gemini-2.5-pro", "1.25"),  # the catalogue says gemini/gemini-2.5-pro
        ("azure", "gpt-4o", "2.5"),  # azure/gpt-4o
        ("openai", "gpt-4o", "2.5"),
    ],
)
def test_lookup_tries_the_provider_qualified_name_then_the_bare_one(
    provider: str, model: str, input_: str
) -> None:
    price = CATALOGUE.lookup(provider, model)
    assert price is not None
    assert price.input == m(input_)


def test_anthropic_carries_cache_write_and_gemini_a_long_context_tier() -> None:
    sonnet = CATALOGUE.lookup("anthropic", "claude-sonnet-4-5")
    gemini = CATALOGUE.lookup("gemini", "gemini-2.5-pro")
    assert sonnet is not None
    assert gemini is not None
    assert (sonnet.cache_read, sonnet.cache_write) == (m("0.3"), m("3.75"))
    assert (gemini.input_long, gemini.output_long) == (m("2.5"), m("15"))


@pytest.mark.parametrize(("provider", "model"), [("openai", "no-such-model"), ("x", "mock")])
def test_an_unknown_model_has_no_price(provider: str, model: str) -> None:
    assert CATALOGUE.lookup(provider, model) is None


def test_the_file_holds_plain_decimal_strings_and_sane_shapes() -> None:
    for name, entry in RAW["models"].items():
        assert entry["provider"] in {"openai", "anthropic", "gemini", "azure", "mock"}, name
        for field in RATE_FIELDS:
            if field in entry:
                assert re.fullmatch(r"\d+(\.\d+)?", entry[field]), (name, field, entry[field])
        price = CATALOGUE.entries[name]
        if price.cache_read is not None:
            assert price.cache_read <= price.input, name
        if price.batch_input is not None:
            assert price.batch_input <= price.input, name
        if price.input_above_200k is not None:
            assert price.input_above_200k >= price.input, name


# --- overrides ----------------------------------------------------------------------------


def test_an_override_replaces_fields_and_changes_the_version() -> None:
    custom = load_catalogue(overrides={"gpt-4o-mini": {"input": "0.10"}})
    price = custom.lookup("openai", "gpt-4o-mini")
    assert price is not None
    assert price.input == m("0.10")
    assert price.output == m("0.6")  # untouched fields stay
    assert custom.version.startswith(f"{CATALOGUE.version}+ovr.")
    assert load_catalogue(overrides={"gpt-4o-mini": {"input": "0.10"}}).version == custom.version
    assert load_catalogue(overrides={"gpt-4o-mini": {"input": "0.11"}}).version != custom.version


def test_an_override_adds_a_model_and_an_alias() -> None:
    custom = load_catalogue(
        overrides={
            "my-llama": {"provider": "openai", "input": "0.2", "output": "0.2"},
            "azure/prod-gpt4o": {"alias": "azure/gpt-4o"},
        }
    )
    assert custom.lookup("openai", "my-llama") == Price.per_million(input="0.2", output="0.2")
    assert custom.lookup("azure", "prod-gpt4o") == custom.lookup("azure", "gpt-4o")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"gpt-4o": {"input": "-1"}}, "gpt-4o"),
        ({"gpt-4o": {"inptu": "1"}}, "gpt-4o"),
        ({"new-model": {"input": "1"}}, "new-model"),  # provider and output missing
        ({"x": {"alias": "no-such-model"}}, "alias"),
        ({"x": {"alias": "gpt-4o", "input": "1"}}, "alias"),
    ],
)
def test_a_bad_override_is_refused_with_its_name(
    overrides: dict[str, dict[str, str]], match: str
) -> None:
    with pytest.raises(CatalogueError, match=match):
        load_catalogue(overrides=overrides)


def test_overrides_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text('gpt-4o:\n  input: "2.00"\n  output: 9\n', "utf-8")
    custom = load_catalogue(overrides=load_overrides(path))
    price = custom.lookup("openai", "gpt-4o")
    assert price is not None
    assert (price.input, price.output) == (m("2.00"), m("9"))
    assert load_overrides(None) == {}


@pytest.mark.parametrize("text", ["- a\n- b\n", "gpt-4o: 3\n", "a: [\n"])
def test_malformed_override_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text, "utf-8")
    with pytest.raises(CatalogueError):
        load_overrides(path)


def test_a_malformed_catalogue_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.json"
    path.write_text(json.dumps({"version": "v", "models": {"m": {"input": "1"}}}), "utf-8")
    with pytest.raises(CatalogueError, match=r"models\.m"):
        load_catalogue(path)
    with pytest.raises(CatalogueError, match="cannot read"):
        load_catalogue(tmp_path / "missing.json")


# --- the builder --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_token", "per_million"),
    [(1.5e-07, "0.15"), (3.75e-06, "3.75"), (1e-05, "10"), (7.5e-08, "0.075"), (0, "0")],
)
def test_per_token_floats_become_exact_per_million_strings(
    per_token: float, per_million: str
) -> None:
    assert build_catalogue.per_million(per_token) == per_million


REFERENCE: Final = {
    "_about": "facts filtered on 2026-11-26",
    "models": {
        "gpt-x": {
            "litellm_provider": "openai",
            "mode": "chat",
            "input_cost_per_token": 1e-06,
            "output_cost_per_token": 4e-06,
            "output_cost_per_reasoning_token": 4e-06,
            "input_cost_per_token_batches": 5e-07,
            "output_cost_per_token_batches": 2e-06,
            "max_input_tokens": 1000,
        },
        "gemini/g": {
            "litellm_provider": "gemini",
            "mode": "chat",
            "input_cost_per_token": 1e-06,
            "output_cost_per_token": 2e-06,
            "output_cost_per_reasoning_token": 3e-06,
            "input_cost_per_token_above_200k_tokens": 2e-06,
        },
        "bedrock-model": {
            "litellm_provider": "bedrock_converse",
            "mode": "chat",
            "input_cost_per_token": 1e-06,
            "output_cost_per_token": 1e-06,
        },
        "embed": {"litellm_provider": "openai", "mode": "embedding", "input_cost_per_token": 1e-7},
    },
}


def test_build_keeps_supported_chat_models_and_adds_the_mock_price() -> None:
    built = build_catalogue.build(REFERENCE)
    assert sorted(built["models"]) == ["embed", "gemini/g", "gpt-x", "mock-*"]
    # An embedding model has no output tokens: a missing output price is "0".
    assert built["models"]["embed"] == {"provider": "openai", "input": "0.1", "output": "0"}
    assert built["models"]["gpt-x"] == {
        "provider": "openai",
        "input": "1",
        "output": "4",  # reasoning equal to output: dropped
        "batch_input": "0.5",
        "batch_output": "2",
        "max_input_tokens": 1000,
    }
    assert built["models"]["gemini/g"]["reasoning"] == "3"
    assert built["models"]["gemini/g"]["input_above_200k"] == "2"
    assert built["version"].startswith("2026-11-26.")
    assert build_catalogue.build(REFERENCE)["version"] == built["version"]  # deterministic


def test_the_checked_in_file_is_what_the_builder_makes() -> None:
    """Where the reference facts are beside the repository (../shared/reference, as in
    CI) the checked-in catalogue must be exactly what the builder makes of them;
    without them, the checked-in file must still load and price the default models."""
    if build_catalogue.DEFAULT_REFERENCE.exists():
        assert build_catalogue.main(["--check"]) == 0
    else:
        from workers.cost.catalogue import load_catalogue

        catalogue = load_catalogue()
        assert catalogue.version
        assert catalogue.lookup("openai", "gpt-4o-mini") is not None
