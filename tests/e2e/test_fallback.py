"""End to end fallback on the real pipeline: 10,000-request runs against failing primaries.

The stack (every component its own process, real Kafka) runs with its own routes
file: each scenario is a client-facing model whose primary deployment the mock
provider makes fail (by the upstream model name) and whose fallback is healthy.

    always-down    primary answers 500 on every call     -> >= 99.9 % served by the fallback
    flaky          primary answers 500 on 20 % of calls  -> all succeed, extra attempts recorded
    short-context  primary refuses context_length_exceeded -> the context_window_fallbacks chain

What the client sees (`x-tollway-deployment`, `x-tollway-attempts`) is checked
against what the routers recorded on tollway.attempts for the run's request ids.
The circuit breaker (5 failures in a row, 30 s cooldown, per router) opens on the
always-down primary: from then on its plans skip it, so most requests take 1
attempt; the requests planned before it opened take 3 (primary, its retry,
fallback). Sync requests at high concurrency, over aiohttp (httpx's default
transport costs several ms of client CPU per request on this machine).

Run with `-s` to see each run's figures: wall time, requests/s, attempts per
request, and CPU ms per request of every component (read from /proc).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple

import aiohttp
import httpx
import pytest

from deploy.stack import STATE_DIR, Stack
from schemas import topics
from tests.integration.conftest import free_port
from tests.integration.kafka_io import TopicReader

pytestmark = pytest.mark.e2e

REQUESTS: Final = 10_000
CONCURRENCY: Final = 256
TEAM_ALIAS: Final = "house-model"
"""Aliased to `long-context` for team `default` (every request's team until tenancy)."""

ROUTES_YAML: Final = """
models:
  always-down:
    deployments:
      - {{name: down-primary, base_url: "{mock}", model: mock-error-500}}
      - {{name: down-fallback, base_url: "{mock}", model: backup-a}}
  flaky:
    deployments:
      - {{name: flaky-primary, base_url: "{mock}", model: mock-flaky-20}}
      - {{name: flaky-fallback, base_url: "{mock}", model: backup-b}}
  short-context:
    context_window_fallbacks: [long-context]
    deployments:
      - {{name: short-primary, base_url: "{mock}", model: mock-context-window}}
  long-context:
    deployments:
      - {{name: long-primary, base_url: "{mock}"}}  # called as `long-context`
  "mock-*":
    deployments:
      - {{name: mock, base_url: "{mock}"}}
aliases:
  teams: {{default: {{{alias}: long-context}}}}
"""


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    mock_port = free_port()
    routes_file = tmp_path_factory.mktemp("fallback") / "routes.yaml"
    mock_url = f"http://127.0.0.1:{mock_port}/v1"
    routes_file.write_text(ROUTES_YAML.format(mock=mock_url, alias=TEAM_ALIAS), "utf-8")
    running = Stack(
        ingress_port=free_port(),
        mock_port=mock_port,
        clickhouse_port=free_port(),
        clickhouse_data=STATE_DIR / "clickhouse-e2e-fallback",
        routers=2,
        mock_latency_ms=20,
        log_dir=STATE_DIR / "logs" / "e2e-fallback",
        extra_env={
            "TOLLWAY_ROUTES_FILE": str(routes_file),
            "TOLLWAY_ROUTER_SESSION_TIMEOUT_MS": "6000",
        },
    )
    try:
        running.start(kafka_bootstrap)
    except BaseException:
        running.stop()  # a component that did not come up must not leave the others running
        raise
    yield running
    running.stop()


class Answer(NamedTuple):
    """What the client saw for one sync request (status 0: no HTTP answer)."""

    status: int
    request_id: str
    deployment: str
    attempts: int


async def run_sync(
    url: str, model: str, count: int, concurrency: int = CONCURRENCY
) -> list[Answer]:
    """`count` sync chat completions, `concurrency` at a time (closed loop)."""
    answers: list[Answer] = []
    next_index = iter(range(count))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for i in next_index:
                body = {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]}
                try:
                    async with session.post(f"{url}/v1/chat/completions", json=body) as reply:
                        await reply.read()
                        headers = reply.headers
                        answers.append(
                            Answer(
                                reply.status,
                                headers.get("x-tollway-request-id", ""),
                                headers.get("x-tollway-deployment", ""),
                                int(headers.get("x-tollway-attempts", "0")),
                            )
                        )
                except (aiohttp.ClientError, TimeoutError):
                    answers.append(Answer(0, "", "", 0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


async def recorded_attempts(
    reader: TopicReader, answers: list[Answer], timeout_s: float = 60.0
) -> dict[str, list[dict[str, Any]]]:
    """The attempts on tollway.attempts for the answered ids, in attempt order per id.

    Reads until as many arrived as the answers claim in `x-tollway-attempts`, then
    half a second more, so an attempt recorded but not counted would show up too.
    """
    ids = {a.request_id for a in answers if a.request_id}
    claimed = sum(a.attempts for a in answers)
    found = await reader.collect("attempt", ids, count=claimed, timeout_s=timeout_s)
    found += await reader.collect("attempt", ids, count=1, timeout_s=0.5)
    per_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for key, value in found:
        assert isinstance(value, dict)
        per_id[key].append(value)
    for attempts in per_id.values():
        attempts.sort(key=lambda a: a["attempt"])
    return per_id


def cpu_s(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) each component has used so far, from /proc (Linux)."""
    used: dict[str, float] = {}
    for component in stack.components:
        if component.process is None:
            continue
        stat = Path(f"/proc/{component.process.pid}/stat")
        if stat.is_file():  # fields after the command name: state is 3, utime 14, stime 15
            fields = stat.read_text().rsplit(")", 1)[1].split()
            used[component.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def cpu_report(before: dict[str, float], after: dict[str, float], requests: int) -> str:
    """CPU ms per request of each component between two `cpu_s` readings."""
    per_request = {name: 1000 * (after[name] - before.get(name, 0.0)) / requests for name in after}
    return ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(per_request.items()))


async def load_and_record(
    stack: Stack, bootstrap: str, model: str, count: int
) -> tuple[list[Answer], dict[str, list[dict[str, Any]]], float]:
    reader = await TopicReader(bootstrap, topics.ATTEMPTS.name).start()
    try:
        started, cpu_before = time.monotonic(), {**cpu_s(stack), "client": time.process_time()}
        answers = await run_sync(stack.url, model, count)
        elapsed_s = time.monotonic() - started
        cpu_after = {**cpu_s(stack), "client": time.process_time()}
        print(f"\n{model}: CPU ms per request: {cpu_report(cpu_before, cpu_after, count)}")
        attempts = await recorded_attempts(reader, answers)
    finally:
        await reader.stop()
    return answers, attempts, elapsed_s


async def test_a_primary_failing_every_call_is_served_by_its_fallback(
    stack: Stack, kafka_bootstrap: str
) -> None:
    answers, attempts, elapsed_s = await load_and_record(
        stack, kafka_bootstrap, "always-down", REQUESTS
    )
    ok = [a for a in answers if a.status == 200]
    assert len(answers) == REQUESTS
    assert len(ok) >= 0.999 * REQUESTS, Counter(a.status for a in answers)
    assert {a.deployment for a in ok} == {"down-fallback"}
    # 1 attempt when the plan was made with the breaker open (primary moved last); 3 when
    # it was closed or half-open: the primary, its one retry, then the fallback.
    assert {a.attempts for a in ok} <= {1, 3}

    assert set(attempts) == {a.request_id for a in ok}
    total = sum(len(v) for v in attempts.values())
    assert total == sum(a.attempts for a in ok), "every attempt the client was told of is recorded"
    primary = [x for v in attempts.values() for x in v if x["deployment"] == "down-primary"]
    assert all(x["outcome"] == "error" and x["http_status"] == 500 for x in primary)
    assert all(v[-1]["deployment"] == "down-fallback" for v in attempts.values())
    assert all(v[-1]["outcome"] == "ok" for v in attempts.values())
    assert len(primary) < 0.2 * REQUESTS, "the open breaker should make most plans skip it"
    print(
        f"\nalways-down: {len(ok)}/{REQUESTS} ok in {elapsed_s:.1f} s "
        f"({REQUESTS / elapsed_s:.0f} req/s), {total} attempts, {len(primary)} on the primary, "
        f"attempts per request {dict(sorted(Counter(a.attempts for a in ok).items()))}"
    )


async def test_a_20_percent_flaky_primary_loses_nothing_and_every_retry_is_recorded(
    stack: Stack, kafka_bootstrap: str
) -> None:
    answers, attempts, elapsed_s = await load_and_record(stack, kafka_bootstrap, "flaky", REQUESTS)
    assert Counter(a.status for a in answers) == {200: REQUESTS}
    assert {a.deployment for a in answers} <= {"flaky-primary", "flaky-fallback"}

    assert set(attempts) == {a.request_id for a in answers}
    total = sum(len(v) for v in attempts.values())
    assert total == sum(a.attempts for a in answers)
    assert total > REQUESTS, "the primary's failures must show up as extra attempts"
    for request_attempts in attempts.values():
        *failed, last = request_attempts
        assert last["outcome"] == "ok"
        assert all(x["outcome"] == "error" and x["http_status"] == 500 for x in failed)
        assert all(x["deployment"] == "flaky-primary" for x in failed)
    primary = [x for v in attempts.values() for x in v if x["deployment"] == "flaky-primary"]
    failure_rate = sum(x["outcome"] == "error" for x in primary) / len(primary)
    # The mock fails a seeded 20 % of the calls it gets; the breaker (5 in a row) may open
    # now and then, which changes how many calls the primary gets, not its failure rate.
    assert 0.15 <= failure_rate <= 0.25, failure_rate
    print(
        f"\nflaky: {REQUESTS}/{REQUESTS} ok in {elapsed_s:.1f} s ({REQUESTS / elapsed_s:.0f} "
        f"req/s), {total} attempts (+{100 * (total - REQUESTS) / REQUESTS:.1f} %), "
        f"{len(primary)} on the primary ({100 * failure_rate:.1f} % failed), served by "
        f"{dict(Counter(a.deployment for a in answers))}"
    )


async def test_a_context_window_refusal_goes_to_the_long_context_chain(
    stack: Stack, kafka_bootstrap: str
) -> None:
    answers, attempts, _ = await load_and_record(stack, kafka_bootstrap, "short-context", 20)
    assert Counter(a.status for a in answers) == {200: 20}
    assert {(a.deployment, a.attempts) for a in answers} == {("long-primary", 2)}
    for request_attempts in attempts.values():
        refused, served = request_attempts
        assert (refused["deployment"], refused["http_status"]) == ("short-primary", 400)
        assert refused["error_code"] == "context_length_exceeded"
        # the chain's deployment has no `model`: it is called by the chain model's name
        assert (served["deployment"], served["model"], served["outcome"]) == (
            "long-primary",
            "long-context",
            "ok",
        )


async def test_a_team_alias_routes_to_its_target_and_keeps_the_asked_name(
    stack: Stack, kafka_bootstrap: str
) -> None:
    reader = await TopicReader(kafka_bootstrap, topics.RESULTS.name).start()
    try:
        answers = await run_sync(stack.url, TEAM_ALIAS, 5, concurrency=5)
        assert {(a.status, a.deployment) for a in answers} == {(200, "long-primary")}
        ids = {a.request_id for a in answers}
        results = await reader.collect("result", ids, timeout_s=30)
    finally:
        await reader.stop()
    assert {key for key, _ in results} == ids
    for _, result in results:
        assert isinstance(result, dict)
        assert result["requested_model"] == TEAM_ALIAS  # what the client asked for
        assert result["deployment"] == "long-primary"
    unknown = await run_sync(stack.url, "no-such-alias", 1, concurrency=1)
    assert unknown[0].status == 404


def test_the_stack_serves_this_modules_routes_file(stack: Stack) -> None:
    names = {m["id"] for m in httpx.get(f"{stack.url}/v1/models", timeout=10).json()["data"]}
    assert names == {"always-down", "flaky", "short-context", "long-context"}
