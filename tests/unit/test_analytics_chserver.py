"""analytics/chserver.py without an engine: body decoding and statement classification."""

from __future__ import annotations

import gzip
import zlib

import lz4.frame  # type: ignore[import-untyped]  # lz4 ships no type information
import pytest
from backports import zstd

from analytics.chserver import (
    _INSERT_DATA,
    _RESULT_SET,
    _SESSION_ONLY,
    EngineError,
    decompress,
)
from analytics.loader.rows import USAGE
from analytics.loader.sink import MemorySink, SinkUnavailable

BODY = b"INSERT INTO db.t (a, b) FORMAT Native\n\x02\x01" + bytes(range(256)) * 40


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("", lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("zstd", zstd.compress),
        ("lz4", lz4.frame.compress),
        # clickhouse-connect compresses each block as its own frame: frames concatenate
        ("lz4", lambda b: lz4.frame.compress(b[:100]) + lz4.frame.compress(b[100:])),
    ],
)
def test_decompress(encoding: str, encode: object) -> None:
    assert callable(encode)
    assert decompress(encode(BODY), encoding) == BODY


def test_unknown_encodings_are_an_engine_error() -> None:
    with pytest.raises(EngineError) as caught:
        decompress(b"x", "br")
    assert caught.value.code == "48"


def test_an_insert_statement_is_split_from_its_data() -> None:
    match = _INSERT_DATA.match(BODY)
    assert match is not None
    assert (match["head"], match["fmt"]) == (b"db.t (a, b)", b"Native")
    assert BODY[match.end() :].startswith(b"\x02\x01")
    assert _INSERT_DATA.match(b"INSERT INTO t SELECT 1") is None


@pytest.mark.parametrize(
    ("sql", "rows", "session"),
    [
        ("SELECT 1", True, False),
        ("  (SELECT 1) UNION ALL (SELECT 2)", True, False),
        ("with x as (select 1) select * from x", True, False),
        ("DESCRIBE TABLE t", True, False),
        ("CREATE TABLE t (a UInt8) ENGINE = Memory", False, False),
        ("SET max_threads = 1", False, True),
        ("USE db", False, True),
    ],
)
def test_statement_classes(sql: str, rows: bool, session: bool) -> None:
    assert (_RESULT_SET.match(sql) is not None) is rows
    assert (_SESSION_ONLY.match(sql) is not None) is session


def test_the_memory_sink_is_idempotent_like_the_real_one() -> None:
    sink = MemorySink()
    rows = [("u1", "a"), ("u2", "b"), ("u1", "c")]
    assert sink.write(USAGE, rows, "t1") == 2
    assert sink.write(USAGE, rows, "t1") == 0  # the same token: dropped
    assert sink.write(USAGE, [("u2", "x"), ("u3", "y")], "t2") == 1  # known key: skipped
    assert [r[0] for r in sink.tables["usage"]] == ["u1", "u2", "u3"]
    sink.fail_next = 1
    with pytest.raises(SinkUnavailable):
        sink.write(USAGE, [("u4", "z")], "t3")
    assert sink.write(USAGE, [("u4", "z")], "t3") == 1


@pytest.mark.parametrize(
    ("declared", "sent"),
    [
        ("LowCardinality(String)", "String"),
        ("LowCardinality(Nullable(String))", "Nullable(String)"),
        ("Array(LowCardinality(String))", "Array(String)"),
        ("Map(LowCardinality(String), String)", "Map(String, String)"),
        ("Decimal(38, 9)", "Decimal(38, 9)"),
    ],
)
def test_the_loader_sends_low_cardinality_columns_as_their_plain_type(
    declared: str, sent: str
) -> None:
    from analytics.loader.clickhouse import plain_type

    assert plain_type(declared) == sent


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([], []),
        ([5, 1, 3], [(1, 5, [1, 2, 0])]),
        ([0, 60_000, 200_000, 10], [(0, 60_000, [0, 3, 1]), (200_000, 200_000, [2])]),
    ],
)
def test_lookup_windows_split_where_event_times_lie_apart(
    times: list[int], expected: list[tuple[int, int, list[int]]]
) -> None:
    from analytics.loader.clickhouse import windows

    assert windows(times, gap_ms=60_000) == expected
