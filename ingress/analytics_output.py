"""Named-query rows -> the `/v1/analytics` answer: a JSON list object or CSV text. Pure.

Money is exact: a `Decimal` becomes its digits as a string in JSON and CSV alike
(`"0.000000001"`, never a float). Times are ISO-8601 UTC (`2026-01-31T12:00:00.000Z`),
days ISO dates; a missing value (a quantile over no values) is null in JSON and an
empty CSV cell. Other numbers (counts, rates, milliseconds) stay JSON numbers.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from ingress.analytics_params import iso_utc

Cell = str | int | float | bool | None


def cell(value: object) -> Cell:
    """One value as JSON can carry it without losing money precision."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, Decimal):
        return f"{value:f}"  # positional: 0E-9 is 0.000000000
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def json_answer(
    query: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    has_more: bool,
    parameters: Mapping[str, object],
) -> dict[str, Any]:
    """`{"object": "list", "query", "columns", "data": [{column: value}], "has_more", ...}`."""
    return {
        "object": "list",
        "query": query,
        "columns": list(columns),
        "data": [{c: cell(v) for c, v in zip(columns, row, strict=True)} for row in rows],
        "has_more": has_more,
        "parameters": dict(parameters),
    }


def csv_answer(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A header line, then one line per row (RFC 4180 quoting, `\\r\\n` line ends)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if (c := cell(v)) is None else c for v in row])
    return out.getvalue()
