"""schemas/avro_writer.py writes exactly the bytes fastavro writes, for every shipped schema.

Random records are drawn from each schema itself (hypothesis), so a field added to a
schema is covered without touching this file.
"""

from __future__ import annotations

import io
import json
import math
from importlib import resources
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.avro_writer import compile_writer, write_long

_FOLDER = resources.files("schemas") / "avro"
SCHEMA_FILES = sorted(p.name for p in _FOLDER.iterdir() if p.name.endswith(".avsc"))
COMPILED = [
    name
    for name in SCHEMA_FILES
    if compile_writer(json.loads((_FOLDER / name).read_text("utf-8"))) is not None
]
_LONG = st.integers(-(2**63), 2**63 - 1)
_INT = st.integers(-(2**31), 2**31 - 1)
_TEXT = st.text(max_size=40)


def _schema(filename: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((_FOLDER / filename).read_text("utf-8"))
    return schema


def _values(schema: Any, enums: dict[str, list[str]]) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        return st.one_of(*(_values(branch, enums) for branch in schema))
    if isinstance(schema, dict):
        if schema["type"] == "enum":
            enums[schema["name"]] = schema["symbols"]
            return st.sampled_from(schema["symbols"])
        if schema["type"] == "map":
            return st.dictionaries(_TEXT, _values(schema["values"], enums), max_size=4)
        return _values(schema["type"], enums)
    primitives: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "string": _TEXT,
        "bytes": st.binary(max_size=60),
        "int": _INT,
        "long": _LONG,
        "double": st.floats(allow_nan=False),
        "float": st.floats(width=32, allow_nan=False),
        "boolean": st.booleans(),
    }
    if schema in primitives:
        return primitives[schema]
    return st.sampled_from(enums[schema.rsplit(".", 1)[-1]])


def _records(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    enums: dict[str, list[str]] = {}
    fields = {f["name"]: _values(f["type"], enums) for f in schema["fields"]}
    return st.fixed_dictionaries(fields)


def _fastavro_bytes(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return buf.getvalue()


def test_every_hot_path_schema_is_compiled() -> None:
    for name in ("request", "result", "attempt", "stream_chunk", "usage"):
        assert codec.REGISTRY.latest(name).writer is not None, name


@pytest.mark.parametrize("filename", COMPILED)
@settings(max_examples=150)
@given(data=st.data())
def test_same_bytes_as_fastavro(filename: str, data: st.DataObject) -> None:
    schema = _schema(filename)
    record = data.draw(_records(schema))
    encoder = compile_writer(schema)
    assert encoder is not None
    assert encoder(record) == _fastavro_bytes(schema, record)


@pytest.mark.parametrize("filename", COMPILED)
@settings(max_examples=20)
@given(data=st.data())
def test_missing_fields_with_defaults_take_them_as_fastavro_does(
    filename: str, data: st.DataObject
) -> None:
    schema = _schema(filename)
    full = data.draw(_records(schema))
    defaulted = {f["name"] for f in schema["fields"] if "default" in f}
    record = {name: value for name, value in full.items() if name not in defaulted}
    encoder = compile_writer(schema)
    assert encoder is not None
    assert encoder(record) == _fastavro_bytes(schema, record)


@given(_LONG)
def test_long_encoding(value: int) -> None:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", value)
    assert write_long(value) == buf.getvalue()


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**80])
def test_a_long_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(OverflowError):
        write_long(value)


def test_named_enum_reference_and_every_primitive() -> None:
    schema: dict[str, Any] = {
        "type": "record",
        "name": "T",
        "namespace": "x.y",
        "fields": [
            {"name": "first", "type": {"type": "enum", "name": "E", "symbols": ["a", "b"]}},
            {"name": "again", "type": "E"},
            {"name": "full", "type": "x.y.E"},
            {"name": "flag", "type": "boolean"},
            {"name": "ratio", "type": "float"},
            {"name": "wrapped", "type": {"type": "long"}},
            {"name": "maybe", "type": ["null", "bytes"], "default": None},
        ],
    }
    record = {
        "first": "b",
        "again": "a",
        "full": "b",
        "flag": True,
        "ratio": 1.5,
        "wrapped": -(2**40),
        "maybe": b"\x00\xff",
    }
    encoder = compile_writer(schema)
    assert encoder is not None
    assert encoder(record) == _fastavro_bytes(schema, record)
    assert encoder({**record, "ratio": math.inf}) == _fastavro_bytes(
        schema, {**record, "ratio": math.inf}
    )


@pytest.mark.parametrize(
    "field_type",
    [
        {"type": "array", "items": "string"},
        {"type": "map", "values": "long"},
        {"type": "record", "name": "Inner", "fields": []},
        ["string", "null"],
        ["null", "string", "long"],
        ["null", {"type": "array", "items": "string"}],
        "Unknown",
        {"type": "fixed", "name": "F", "size": 4},
    ],
)
def test_shapes_it_does_not_generate_are_left_to_fastavro(field_type: Any) -> None:
    schema = {"type": "record", "name": "T", "fields": [{"name": "f", "type": field_type}]}
    assert compile_writer(schema) is None


def test_not_a_record_is_left_to_fastavro() -> None:
    assert compile_writer({"type": "enum", "name": "E", "symbols": ["a"]}) is None


def test_a_bad_record_fails_loudly() -> None:
    encoder = compile_writer(_schema("request.v1.avsc"))
    assert encoder is not None
    with pytest.raises((AttributeError, KeyError, TypeError)):
        encoder({"request_id": None})
