"""Analytics commands of the `tollway` CLI (`add_commands` registers them).

tollway analytics serve      the embedded ClickHouse (chdb) on loopback, HTTP interface
tollway analytics migrate    apply the numbered migrations (idempotent)
tollway analytics queries    list the named queries
tollway loader               outcome topics -> ClickHouse (settings: TOLLWAY_ANALYTICS_*)
tollway spend [REPORT]       by (--by team|key|model|provider|tag), daily, top, per-1k, burn-down
tollway usage [REPORT]       latency, calls, reliability, cache, budget-events
tollway sql "SELECT ..."     a read-only ad-hoc query (readonly=1; anything else is refused)

Every report takes --days N (default 7) or --start/--end (ISO dates or times, UTC),
--team, and --format table|json|csv. ClickHouse is `CLICKHOUSE_URL`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from analytics.report import FORMATS, Format, render
from analytics.settings import AnalyticsSettings

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from analytics.queries import NamedQuery

_READ_ONLY: Final = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXPLAIN|EXISTS)\b", re.I)
_TRAILING_FORMAT: Final = re.compile(r"\bFORMAT\s+\w+\s*;?\s*$", re.I)
_SPEND_REPORTS: Final = ("by", "daily", "top", "per-1k", "burn-down")
_USAGE_REPORTS: Final = ("latency", "calls", "reliability", "cache", "budget-events")


class UsageError(Exception):
    """The command line asked for something this command refuses; exit status 2."""


def readonly_sql(sql: str) -> str:
    """The statement if it is one read-only query without FORMAT; raises UsageError otherwise."""
    statement = sql.strip().removesuffix(";").strip()
    if not _READ_ONLY.match(statement):
        raise UsageError("only SELECT, WITH, SHOW, DESCRIBE, EXPLAIN or EXISTS queries are run")
    if ";" in statement:
        raise UsageError("one statement at a time")
    if _TRAILING_FORMAT.search(statement):
        raise UsageError("leave out FORMAT; use --format table|json|csv")
    return statement


def period(
    days: int, start: str | None, end: str | None, now: datetime
) -> tuple[datetime, datetime]:
    """[start, end) in UTC: the given bounds, or the last `days` days up to `now`."""
    until = _instant(end) if end else now
    since = _instant(start) if start else until - timedelta(days=days)
    if since >= until:
        raise UsageError("--start must be before --end")
    return since, until


def _instant(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _days(since: datetime, until: datetime) -> tuple[date, date]:
    """Inclusive days covering [since, until)."""
    return since.date(), (until - timedelta(milliseconds=1)).date()


# --- commands -----------------------------------------------------------------------


def _client(settings: AnalyticsSettings) -> Client:
    from analytics.connection import connect

    return connect(settings.url)


def _print_query(
    settings: AnalyticsSettings, query: NamedQuery[Any], fmt: Format, **params: object
) -> int:
    from analytics.queries import run

    rows = run(_client(settings), query, settings.database, **params)
    columns = list(getattr(query.row, "_fields", ()))
    sys.stdout.write(render(columns, rows, fmt))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    settings = AnalyticsSettings()
    path = args.data_path or settings.data_path
    path.mkdir(parents=True, exist_ok=True)
    asyncio.run(
        _serve_until_signal(
            args.host or settings.server_host, args.port or settings.server_port, str(path)
        )
    )
    return 0


async def _serve_until_signal(host: str, port: int, data_path: str) -> None:
    from analytics.chserver import serve

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = asyncio.create_task(serve(host, port, data_path))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
    server.cancel()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await server
    if server in done:
        server.result()  # the server failed on its own (port taken, path locked): say why


def _cmd_migrate(_: argparse.Namespace) -> int:
    from analytics.migrate import migrate

    settings = AnalyticsSettings()
    applied = migrate(_client(settings), settings.database, settings.raw_ttl_days)
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
    sys.stdout.write(f"applied: {names or 'nothing (up to date)'}\n")
    return 0


def _cmd_queries(args: argparse.Namespace) -> int:
    from analytics.queries import QUERIES

    rows = [(q.name, ", ".join(q.params), q.description) for q in QUERIES.values()]
    sys.stdout.write(render(["name", "parameters", "description"], rows, args.format))
    return 0


def _cmd_loader(_: argparse.Namespace) -> int:
    import uvloop

    from analytics.loader.consumer import serve
    from schemas.settings import KafkaSettings

    uvloop.run(serve(KafkaSettings(), AnalyticsSettings()))
    return 0


def _cmd_spend(args: argparse.Namespace) -> int:
    from analytics import queries as q

    settings = AnalyticsSettings()
    since, until = period(args.days, args.start, args.end, datetime.now(UTC))
    first_day, last_day = _days(since, until)
    team = args.team or ""
    if args.report == "by":
        by_query = {
            "team": q.SPEND_BY_TEAM,
            "key": q.SPEND_BY_KEY,
            "model": q.SPEND_BY_MODEL,
            "provider": q.SPEND_BY_PROVIDER,
            "tag": q.SPEND_BY_TAG,
        }[args.by]
        return _print_query(settings, by_query, args.format, start=since, end=until, team=team)
    if args.report == "daily":
        if team:
            return _print_query(
                settings,
                q.DAILY_TREND,
                args.format,
                start_day=first_day,
                end_day=last_day,
                team=team,
            )
        return _print_query(
            settings, q.SPEND_BY_TEAM_BY_DAY, args.format, start_day=first_day, end_day=last_day
        )
    if args.report == "top":
        return _print_query(
            settings,
            q.TOP_SPENDERS,
            args.format,
            start=since,
            end=until,
            team=team,
            limit=args.limit,
        )
    if args.report == "per-1k":
        return _print_query(
            settings, q.COST_PER_1K_REQUESTS, args.format, start=since, end=until, team=team
        )
    if not args.scope_id and args.scope_type != "global":
        raise UsageError("burn-down needs --scope-id (or --scope-type global)")
    return _print_query(
        settings,
        q.BUDGET_BURN_DOWN,
        args.format,
        start_day=first_day,
        end_day=last_day,
        scope_type=args.scope_type,
        scope_id=args.scope_id or "",
        limit_usd=Decimal(args.limit_usd),
    )


def _cmd_usage(args: argparse.Namespace) -> int:
    from analytics import queries as q

    settings = AnalyticsSettings()
    since, until = period(args.days, args.start, args.end, datetime.now(UTC))
    team = args.team or ""
    if args.report == "budget-events":
        return _print_query(
            settings, q.BUDGET_EVENTS, args.format, start=since, end=until, scope_id=team
        )
    by_report: dict[str, NamedQuery[Any]] = {
        "latency": q.LATENCY_BY_DEPLOYMENT,
        "calls": q.CALL_LATENCY_BY_DEPLOYMENT,
        "reliability": q.RELIABILITY,
        "cache": q.CACHE_SAVINGS,
    }
    chosen = by_report[args.report]
    return _print_query(settings, chosen, args.format, start=since, end=until, team=team)


def _cmd_sql(args: argparse.Namespace) -> int:
    statement = readonly_sql(args.query)
    result = _client(AnalyticsSettings()).query(statement, settings={"readonly": 1})
    sys.stdout.write(render(list(result.column_names), result.result_rows, args.format))
    return 0


# --- registration -------------------------------------------------------------------


def _report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=7, help="the last N days (default 7)")
    parser.add_argument("--start", help="ISO date or time (UTC unless it says otherwise)")
    parser.add_argument("--end", help="ISO date or time, exclusive (default: now)")
    parser.add_argument("--team", help="only this team")
    parser.add_argument("--format", choices=FORMATS, default="table")


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except UsageError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 2

    return run


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `analytics`, `loader`, `spend`, `usage` and `sql` on the `tollway` parser."""
    analytics = sub.add_parser("analytics", help="the ClickHouse store: serve, migrate, queries")
    actions = analytics.add_subparsers(dest="analytics_command", required=True)
    serve = actions.add_parser("serve", help="run the embedded ClickHouse (chdb) over HTTP")
    serve.add_argument("--host", help="default TOLLWAY_ANALYTICS_SERVER_HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, help="default TOLLWAY_ANALYTICS_SERVER_PORT or 8123")
    serve.add_argument("--data-path", type=Path, help="default .tollway/clickhouse")
    serve.set_defaults(func=_cmd_serve)
    actions.add_parser("migrate", help="apply the migrations").set_defaults(func=_cmd_migrate)
    listing = actions.add_parser("queries", help="list the named queries")
    listing.add_argument("--format", choices=FORMATS, default="table")
    listing.set_defaults(func=_cmd_queries)

    sub.add_parser("loader", help="load the outcome topics into ClickHouse").set_defaults(
        func=_cmd_loader
    )

    spend = sub.add_parser("spend", help="spend reports")
    spend.add_argument("report", nargs="?", choices=_SPEND_REPORTS, default="by")
    spend.add_argument("--by", choices=("team", "key", "model", "provider", "tag"), default="team")
    spend.add_argument("--limit", type=int, default=10, help="top: how many")
    spend.add_argument("--scope-type", choices=("team", "key", "model", "global"), default="team")
    spend.add_argument("--scope-id", help="burn-down: the team, key or model")
    spend.add_argument("--limit-usd", default="0", help="burn-down: the budget, USD")
    _report_options(spend)
    spend.set_defaults(func=_guarded(_cmd_spend))

    usage = sub.add_parser("usage", help="latency, reliability, cache and budget reports")
    usage.add_argument("report", nargs="?", choices=_USAGE_REPORTS, default="latency")
    _report_options(usage)
    usage.set_defaults(func=_guarded(_cmd_usage))

    sql = sub.add_parser("sql", help="run a read-only SQL query")
    sql.add_argument("query")
    sql.add_argument("--format", choices=FORMATS, default="table")
    sql.set_defaults(func=_guarded(_cmd_sql))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m analytics.cli ...`: these commands without the rest of the `tollway` CLI."""
    import logging

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    root = argparse.ArgumentParser(prog="tollway", description=__doc__)
    add_commands(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
