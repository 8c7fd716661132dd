"""workers/batches/jsonl.py: batch input lines, one at a time; a bad line fails alone."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.batches.jsonl import (
    MAX_CUSTOM_ID_CHARS,
    MAX_FILE_BYTES,
    MAX_REQUESTS,
    BatchLine,
    LineError,
    LineParser,
    LineTooLong,
    split_lines,
)

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def line(**overrides: object) -> bytes:
    obj: dict[str, object] = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": BODY,
    }
    obj.update(overrides)
    return orjson.dumps({k: v for k, v in obj.items() if v is not ...})


def parser() -> LineParser:
    return LineParser("/v1/chat/completions", lambda model: model != "no-such-model")


def test_limits_are_at_least_openais() -> None:
    assert MAX_REQUESTS >= 50_000
    assert MAX_FILE_BYTES >= 200 * 1024 * 1024


def test_a_valid_line_keeps_its_body_and_model() -> None:
    parsed = parser().parse(7, line())
    assert isinstance(parsed, BatchLine)
    assert (parsed.line, parsed.custom_id, parsed.model) == (7, "a", "gpt-4o-mini")
    assert orjson.loads(parsed.body) == BODY


@pytest.mark.parametrize(
    ("raw", "code", "custom_id"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_request", None),
        (line(custom_id=...), "missing_custom_id", None),
        (line(custom_id=""), "missing_custom_id", None),
        (line(custom_id=5), "missing_custom_id", None),
        (line(custom_id="x" * (MAX_CUSTOM_ID_CHARS + 1)), "missing_custom_id", None),
        (line(method="GET"), "invalid_method", "a"),
        (line(url="/v1/embeddings"), "invalid_url", "a"),
        (line(body="hi"), "invalid_request", "a"),
        (line(body={"model": "gpt-4o-mini"}), "invalid_request", "a"),
        (line(body={**BODY, "max_tokens": "5"}), "invalid_request", "a"),
        (line(body={**BODY, "bogus": 1}), "invalid_request", "a"),
        (line(body={**BODY, "stream": True}), "invalid_request", "a"),
        (line(body={**BODY, "model": "no-such-model"}), "model_not_found", "a"),
        (line(extra=1), "invalid_request", "a"),
    ],
)
def test_bad_lines_become_line_errors(raw: bytes, code: str, custom_id: str | None) -> None:
    parsed = parser().parse(3, raw)
    assert isinstance(parsed, LineError), parsed
    assert (parsed.line, parsed.code, parsed.custom_id) == (3, code, custom_id)
    assert parsed.message


def test_duplicate_custom_ids_fail_after_the_first() -> None:
    p = parser()
    assert isinstance(p.parse(1, line()), BatchLine)
    second = p.parse(2, line())
    assert isinstance(second, LineError)
    assert second.code == "duplicate_custom_id"
    assert isinstance(p.parse(3, line(custom_id="b")), BatchLine)


def test_too_long_lines_are_reported_without_keeping_their_bytes() -> None:
    data = [b"short\n", b"x" * 50, b"y" * 50 + b"\nend\n"]
    lines = list(split_lines(data, max_line_bytes=60))
    assert lines[0] == (1, b"short")
    assert lines[1][0] == 2
    assert isinstance(lines[1][1], LineTooLong)
    assert lines[1][1].size == 100
    assert lines[2] == (3, b"end")
    assert parser().parse(2, lines[1][1]).code == "line_too_long"  # type: ignore[union-attr]


def test_last_line_without_newline_and_blank_lines() -> None:
    assert list(split_lines([b"a\n\n  \nb"])) == [(1, b"a"), (2, b""), (3, b"  "), (4, b"b")]
    assert list(split_lines([b"a\n", b"  "])) == [(1, b"a")]


@given(
    st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    st.lists(st.integers(min_value=1, max_value=15), min_size=1, max_size=10),
)
def test_split_lines_does_not_depend_on_chunking(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(x + b"\n" for x in lines)
    chunks, start, i = [], 0, 0
    while start < len(data):
        size = cuts[i % len(cuts)]
        chunks.append(data[start : start + size])
        start += size
        i += 1
    assert list(split_lines(chunks)) == list(enumerate(lines, start=1))
