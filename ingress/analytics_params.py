"""Query-string parameters of `GET /v1/analytics/{query}` -> a named query's parameters. Pure.

Every named query (analytics/queries.py) is offered over HTTP with the same small
vocabulary, whatever its SQL takes:

    since, until   the period [since, until), UTC: an ISO-8601 date or time (a time
                   without a zone is UTC) or a relative `<n>m|h|d|w` counted back from
                   now; `until` may also be `now`. Default: the 7 days up to now.
                   Daily queries cover the days that period touches (until exclusive).
    team           one team ('' or absent = every team), where the query takes one
    scope_type, scope_id, limit_usd    budget_burn_down (scope_id also budget_events)
    limit          rows returned at most, 1..MAX_ROWS (top_spenders: how many, default 10)
    format         json (default) | csv

Anything else, a repeated parameter, or a value that does not parse is an
`InvalidRequest` (400) naming the parameter. Inputs (`now` included) are arguments:
this module does no I/O and reads no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any, Final, Literal

from analytics.queries import NamedQuery
from schemas.errors import InvalidRequest

Format = Literal["json", "csv"]
FORMATS: Final[tuple[Format, ...]] = ("json", "csv")
MAX_ROWS: Final = 10_000
DEFAULT_TOP: Final = 10
DEFAULT_PERIOD: Final = timedelta(days=7)
MAX_TEXT_CHARS: Final = 256
SCOPE_TYPES: Final = ("team", "key", "model", "global")
# ClickHouse's `Date` ends in 2149 and DateTime64 values before 1970 are not useful here.
_FIRST_YEAR: Final = 1970
_LAST_YEAR: Final = 2148
_MONEY_DIGITS: Final = 29  # Decimal(38, 9): 29 digits before the point
_RELATIVE: Final = re.compile(r"^(\d{1,6})([mhdw])$")
_UNIT: Final = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ONE_MS: Final = timedelta(milliseconds=1)
_TIME_HELP: Final = "ISO-8601 date or time (UTC unless it says otherwise) or <n>m|h|d|w ago"


@dataclass(frozen=True, slots=True)
class HttpParam:
    """One query-string parameter of an analytics route, as `GET /v1/analytics` lists it."""

    name: str
    type: str
    required: bool
    default: str | None
    description: str

    def listing(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "default": self.default,
            "description": self.description,
        }


@dataclass(frozen=True, slots=True)
class AnalyticsCall:
    """A validated request: the query, its typed parameters, and how to answer.

    `params` are exactly the named query's parameters (`limit` of top_spenders is bound
    to `limit + 1` so that the answer knows whether there were more). `resolved` echoes
    the HTTP parameters as the query understood them (relative times made absolute).
    """

    query: NamedQuery[Any]
    params: dict[str, object]
    limit: int
    fmt: Format
    resolved: dict[str, object]


def http_params(query: NamedQuery[Any]) -> tuple[HttpParam, ...]:
    """The query-string parameters `query` takes over HTTP, in a stable order."""
    takes = set(query.params)
    out: list[HttpParam] = []
    if takes & {"start", "start_day"}:
        daily = "start_day" in takes
        span = " (daily: the days this period touches)" if daily else ""
        out += [
            HttpParam("since", _TIME_HELP, False, "7d", f"start of the period, inclusive{span}"),
            HttpParam("until", f"{_TIME_HELP}, or now", False, "now", "end, exclusive"),
        ]
    if "team" in takes:
        out.append(HttpParam("team", "string", False, "", "only this team ('' = every team)"))
    if "scope_type" in takes:
        out += [
            HttpParam("scope_type", "|".join(SCOPE_TYPES), False, "team", "what the budget covers"),
            HttpParam("scope_id", "string", True, None, "the team, key or model (not for global)"),
            HttpParam("limit_usd", "decimal", True, None, "the budget in USD, >= 0"),
        ]
    elif "scope_id" in takes:
        out.append(HttpParam("scope_id", "string", False, "", "only this scope ('' = all)"))
    top = "limit" in takes
    out += [
        HttpParam(
            "limit",
            f"integer 1..{MAX_ROWS}",
            False,
            str(DEFAULT_TOP if top else MAX_ROWS),
            "how many spenders" if top else "rows returned at most (has_more tells if cut)",
        ),
        HttpParam("format", "|".join(FORMATS), False, "json", "json object or text/csv"),
    ]
    return tuple(out)


def parse_call(
    query: NamedQuery[Any], items: Iterable[tuple[str, str]], now: datetime
) -> AnalyticsCall:
    """Validate the query string `items` (name, value pairs in order) for `query` at `now`."""
    accepted = {p.name: p for p in http_params(query)}
    values: dict[str, str] = {}
    for name, value in items:
        if name not in accepted:
            raise InvalidRequest(
                f"Unknown parameter {name!r}; {query.name} takes {', '.join(accepted)}.",
                param=name,
            )
        if name in values:
            raise InvalidRequest(f"Parameter {name!r} is given more than once.", param=name)
        values[name] = value
    for param in accepted.values():
        if param.required and param.name not in values and not _optional_here(param, values):
            raise InvalidRequest(f"Parameter {param.name!r} is required.", param=param.name)

    limit = _integer(values.get("limit"), "limit", int(accepted["limit"].default or MAX_ROWS))
    fmt = _format(values.get("format", "json"))
    resolved: dict[str, object] = {"limit": limit}
    params: dict[str, object] = {}
    takes = query.params
    if "start" in takes or "start_day" in takes:
        since, until = _period(values.get("since"), values.get("until"), now)
        resolved |= {"since": iso_utc(since), "until": iso_utc(until)}
        if "start" in takes:
            params |= {"start": since, "end": until}
        else:
            first, last = since.date(), (until - _ONE_MS).date()
            params |= {"start_day": first, "end_day": last}
            resolved |= {"start_day": first.isoformat(), "end_day": last.isoformat()}
    for name in ("team", "scope_id"):
        if name in takes:
            params[name] = resolved[name] = _text(values.get(name, ""), name)
    if "scope_type" in takes:
        params |= _scope(values)
        resolved |= {k: v for k, v in params.items() if k.startswith("scope_")}
        resolved["limit_usd"] = f"{params['limit_usd']:f}"
    if "limit" in takes:
        params["limit"] = limit + 1
    missing = set(takes) - set(params)
    assert not missing, f"{query.name}: no HTTP binding for {sorted(missing)}"
    return AnalyticsCall(query=query, params=params, limit=limit, fmt=fmt, resolved=resolved)


def _optional_here(param: HttpParam, values: Mapping[str, str]) -> bool:
    """scope_id is required except for the global scope."""
    return param.name == "scope_id" and values.get("scope_type") == "global"


def _period(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    end = now if until is None or until == "now" else _instant(until, "until", now)
    start = end - DEFAULT_PERIOD if since is None else _instant(since, "since", now)
    if start >= end:
        raise InvalidRequest("'since' must be before 'until'.", param="since")
    return start, end


def _instant(text: str, name: str, now: datetime) -> datetime:
    relative = _RELATIVE.match(text)
    if relative:
        try:
            value = now - timedelta(**{_UNIT[relative.group(2)]: int(relative.group(1))})
        except OverflowError:
            value = datetime.min.replace(tzinfo=UTC)  # refused by the year check below
    else:
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidRequest(
                f"{name!r} must be an ISO-8601 date or time (e.g. 2026-01-31 or "
                "2026-01-31T12:00:00Z; send '+' as %2B) or a relative <n>m|h|d|w, "
                "e.g. 7d.",
                param=name,
            ) from None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not _FIRST_YEAR <= value.year <= _LAST_YEAR:
        raise InvalidRequest(
            f"{name!r} must lie between {_FIRST_YEAR} and {_LAST_YEAR}.", param=name
        )
    return value


def _integer(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    if not (len(text) <= 6 and text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_ROWS):
        raise InvalidRequest(f"{name!r} must be an integer from 1 to {MAX_ROWS}.", param=name)
    return int(text)


def _format(text: str) -> Format:
    for fmt in FORMATS:
        if text == fmt:
            return fmt
    raise InvalidRequest(f"'format' must be one of {', '.join(FORMATS)}.", param="format")


def _text(text: str, name: str) -> str:
    if len(text) > MAX_TEXT_CHARS or not text.isprintable():
        raise InvalidRequest(
            f"{name!r} must be printable text of at most {MAX_TEXT_CHARS} characters.", param=name
        )
    return text


def _scope(values: Mapping[str, str]) -> dict[str, object]:
    scope_type = values.get("scope_type", "team")
    if scope_type not in SCOPE_TYPES:
        raise InvalidRequest(
            f"'scope_type' must be one of {', '.join(SCOPE_TYPES)}.", param="scope_type"
        )
    return {
        "scope_type": scope_type,
        "scope_id": "" if scope_type == "global" else _text(values["scope_id"], "scope_id"),
        "limit_usd": _money(values["limit_usd"], "limit_usd"),
    }


def _money(text: str, name: str) -> Decimal:
    """A non-negative USD amount with at most 9 decimal places (Decimal(38, 9)), never a float."""
    try:
        value = Decimal(text.strip())  # exact: construction does not round
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0 or value.adjusted() >= _MONEY_DIGITS:
        raise InvalidRequest(f"{name!r} must be a non-negative decimal amount.", param=name)
    with localcontext() as exact:
        exact.prec = 60  # enough for 29 + 9 digits, so normalize() cannot round
        if value.normalize().as_tuple().exponent < -9:  # type: ignore[operator]  # finite: an int
            raise InvalidRequest(f"{name!r} has more than 9 decimal places.", param=name)
    return value.copy_abs()  # -0 -> 0; copy_abs never rounds


def iso_utc(value: datetime) -> str:
    """ISO-8601 in UTC with millisecond precision and a `Z`: 2026-01-31T12:00:00.000Z."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
