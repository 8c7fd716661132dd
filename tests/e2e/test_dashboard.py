"""The dashboard in headless Chromium over a real stack (issue 11, acceptance 2).

Requests go through the ingress (some succeed, some fail at the provider); once the
loader has landed their rows in ClickHouse, Debian's `chromium` opens
`/admin/v1/dashboard#token=<admin key>` (the key in the fragment: never sent to the
server), runs the page's script, and:

- `--dump-dom`: the rendered numbers (each element's `data-value`) are read and
  compared with SQL run directly against ClickHouse over the same window: the
  dashboard's own queries (analytics.queries.run on ingress/dashboard_sql.py) and
  independent ones (the named queries `reliability`, `latency_by_deployment`, a plain
  `sum(cost_usd)` over `usage`);
- `--screenshot`: a PNG under the stack's log dir, checked to be a real, non-blank
  1400x1800 image (IHDR decoded, IDAT inflated with zlib, scanlines varied).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Final

import clickhouse_connect
import httpx
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from analytics import queries as named
from deploy.stack import Stack
from ingress.dashboard_sql import REQUESTS_BY_TEAM, SPEND_BY_TEAM_OVER_TIME, for_clickhouse
from tests.e2e.conftest import E2E_ADMIN_KEY

OK_REQUESTS: Final = 12
FAILED_REQUESTS: Final = 3
WIDTH: Final = 1400
HEIGHT: Final = 1800
WINDOW_S: Final = 3600  # the page's default window, 1h


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("no chromium binary: `make setup` installs Debian's chromium package")
    return found


@pytest.fixture(scope="module")
def clickhouse(stack: Stack) -> Iterator[Client]:
    client = clickhouse_connect.get_client(
        dsn=f"http://127.0.0.1:{stack.clickhouse_port}", autogenerate_session_id=False
    )
    yield client
    client.close()


def _drive(stack: Stack) -> set[str]:
    """Requests through the ingress; returns the request ids it answered."""
    ids: set[str] = set()
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for i in range(OK_REQUESTS + FAILED_REQUESTS):
            model = "gpt-4o-mini" if i < OK_REQUESTS else "mock-error-400"
            response = http.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]},
            )
            assert (response.status_code == 200) == (i < OK_REQUESTS), response.text
            ids.add(response.headers["x-tollway-request-id"])
    return ids


def _wait_for_rows(clickhouse: Client, ids: set[str], deadline_s: float = 40.0) -> None:
    """Until every request row and every succeeded request's usage row is in ClickHouse."""
    params = {"ids": sorted(ids)}
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            loaded = clickhouse.query(
                "SELECT (SELECT count() FROM tollway.requests"
                "  WHERE request_id IN {ids:Array(String)}),"
                " (SELECT uniqExact(request_id) FROM tollway.usage"
                "  WHERE request_id IN {ids:Array(String)})",
                parameters=params,
            ).result_rows[0]
        except ClickHouseError:  # a fresh ClickHouse: the loader has not migrated yet
            loaded = (0, 0)
        if loaded[0] >= len(ids) and loaded[1] >= OK_REQUESTS:
            return
        assert time.monotonic() < deadline, f"rows loaded {loaded} of {len(ids)} requests"
        time.sleep(0.5)


class _Values(HTMLParser):
    """`id -> data-value` and the rows of the tables (`data-team`, `data-deployment`)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.body: dict[str, str] = {}
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self._row: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        if "id" in a and "data-value" in a:
            self.by_id[a["id"]] = a["data-value"]
        if tag == "tr":
            for kind in ("data-team", "data-deployment", "data-batch"):
                if kind in a:
                    self._row = (kind, a[kind])
                    self.rows[self._row] = {}
        if tag == "td" and self._row is not None and "data-field" in a:
            self.rows[self._row][a["data-field"]] = a.get("data-value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None


def _run_chromium(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        flags = (
            "--headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run "
            f"--user-data-dir={profile} --window-size={WIDTH},{HEIGHT} --virtual-time-budget=5000"
        )
        return subprocess.run(
            [_chromium(), *flags.split(), *args, url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def _png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct scanlines) of an 8-bit RGB(A) PNG, from its own chunks."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "PNG signature"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"CRC of {kind!r}"
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8
    channels = {2: 3, 6: 4}[color]
    raw = zlib.decompress(bytes(idat))
    stride = 1 + width * channels
    assert len(raw) == stride * height
    lines = {raw[i * stride + 1 : (i + 1) * stride] for i in range(height)}
    return width, height, len(lines)


def test_the_dashboard_renders_the_numbers_the_sql_gives(stack: Stack, clickhouse: Client) -> None:
    ids = _drive(stack)
    _wait_for_rows(clickhouse, ids)
    url = f"{stack.url}/admin/v1/dashboard#token={E2E_ADMIN_KEY}"

    dumped = _run_chromium(url, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    page = _Values()
    page.feed(dumped.stdout)
    assert page.body.get("data-state") == "ready", (page.body, dumped.stdout[:2000])
    end = datetime.fromtimestamp(int(page.body["data-generated-at-ms"]) / 1000, tz=UTC)
    start = datetime.fromtimestamp(end.timestamp() - WINDOW_S, tz=UTC)

    # independent SQL over the same window
    spend, calls = clickhouse.query(
        "SELECT sum(cost_usd), count() FROM tollway.usage WHERE occurred_at >= {s:DateTime64(3)}"
        " AND occurred_at < {e:DateTime64(3)}",
        parameters={"s": start, "e": end},
    ).result_rows[0]
    reliability = named.run(clickhouse, named.RELIABILITY, start=start, end=end, team="")
    latency = named.run(clickhouse, named.LATENCY_BY_DEPLOYMENT, start=start, end=end, team="")
    # the dashboard's own queries, run directly
    by_team = named.run(clickhouse, for_clickhouse(REQUESTS_BY_TEAM), start=start, end=end)
    spend_points = named.run(
        clickhouse, for_clickhouse(SPEND_BY_TEAM_OVER_TIME), start=start, end=end, bucket_s=60
    )

    assert Decimal(page.by_id["kpi-spend"]) == spend > 0
    assert Decimal(page.by_id["kpi-spend"]) == sum(p.cost_usd for p in spend_points)
    assert int(page.by_id["kpi-calls"]) == calls >= OK_REQUESTS
    assert int(page.by_id["kpi-requests"]) == sum(r.requests for r in reliability)
    assert int(page.by_id["kpi-failed"]) == sum(r.failed for r in reliability)
    assert int(page.by_id["kpi-failed"]) >= FAILED_REQUESTS
    assert int(page.by_id["kpi-requests"]) >= len(ids)
    teams = {key[1]: row for key, row in page.rows.items() if key[0] == "data-team"}
    assert {t: int(r["requests"]) for t, r in teams.items() if int(r["requests"])} == {
        r.team_id: r.requests for r in by_team
    }
    assert {t: int(r["failed"]) for t, r in teams.items() if int(r["requests"])} == {
        r.team_id: r.failed for r in by_team
    }
    deployments = {key[1]: row for key, row in page.rows.items() if key[0] == "data-deployment"}
    assert {d: int(r["requests"]) for d, r in deployments.items()} == {
        r.deployment: r.requests for r in latency
    }

    shot = stack.log_dir / "dashboard.png"
    shot.unlink(missing_ok=True)
    taken = _run_chromium(url, f"--screenshot={shot}", "--hide-scrollbars")
    assert taken.returncode == 0, taken.stderr[-2000:]
    print(f"dashboard screenshot: {shot}")  # where to look at it
    width, height, distinct_lines = _png_facts(shot)
    assert (width, height) == (WIDTH, HEIGHT)
    assert shot.stat().st_size > 30_000, "a rendered page, not a blank one"
    assert distinct_lines > 200, f"only {distinct_lines} distinct scanlines: blank?"
