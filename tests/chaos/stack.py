"""The stack under chaos: `deploy/stack.py`'s `Stack` (exactly what `tollway up` starts),
with the settings a chaos run needs, each through the environment the processes read.

    mock provider, 2 routers, embedded ClickHouse, loader, cost, budget, batches,
    callbacks, ingress        each its own OS process (python -m deploy.cli ...)

Settings (all documented where they are defined):
- a routes file: `gpt-4o-mini` -> the mock with a 5 s call timeout, so a hung provider
  turns into timed-out attempts and failed results instead of 10-minute waits;
- a webhooks file: team `default`'s signing secret and one endpoint (the test's
  receiver) for batch events; the development allow-list lets the dispatcher call
  loopback (`TOLLWAY_CALLBACKS_ALLOW_HTTP`, `TOLLWAY_CALLBACKS_ALLOW_NETWORKS`) and its
  retries start at 1 s so a receiver outage settles within the run;
- routers: session timeout 6 s, max poll interval 10 s (the freeze outlasts both);
- loader, batches, cost and budget: session timeouts of 6 s (faster takeover);
- `TOLLWAY_AUTH=open` (virtual keys are not what this suite tests).

A fresh ClickHouse data path per run (the loader re-creates the tables), so ClickHouse
holds only what this run's loader wrote and its table-wide counts are this run's.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from clickhouse_connect.driver.exceptions import ClickHouseError

from analytics.loader.consumer import TOPICS as LOADED_TOPICS
from analytics.settings import AnalyticsSettings
from deploy.stack import STATE_DIR, Stack
from tests.chaos.evidence import ClickHouseView
from tests.chaos.load import chat_body
from tests.chaos.receiver import Receiver
from tests.integration.budget_stack import commit_group_at_end
from tests.integration.conftest import free_port
from workers.callbacks.signing import new_secret

CHAOS_DIR = STATE_DIR / "chaos"
MOCK_TIMEOUT_S = 5
WARMUP_TIMEOUT_S = 120.0


def _write_config(workdir: Path, mock_port: int, receiver_url: str, secret: str) -> dict[str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    routes = workdir / "routes.yaml"
    routes.write_text(
        "models:\n  gpt-4o-mini:\n    deployments:\n"
        f'      - {{name: mock, base_url: "http://127.0.0.1:{mock_port}/v1", '
        f"timeout_s: {MOCK_TIMEOUT_S}}}\n",
        "utf-8",
    )
    webhooks = workdir / "webhooks.yaml"
    webhooks.write_text(
        f'teams:\n  default:\n    secrets: ["{secret}"]\n    endpoints:\n'
        f'      - {{id: chaos, url: "{receiver_url}", events: ["batch.*"]}}\n',
        "utf-8",
    )
    webhooks.chmod(0o600)
    return {
        "TOLLWAY_AUTH": "open",
        "TOLLWAY_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "TOLLWAY_ROUTES_FILE": str(routes),
        "TOLLWAY_CALLBACKS_WEBHOOKS_FILE": str(webhooks),
        "TOLLWAY_CALLBACKS_ALLOW_HTTP": "true",
        "TOLLWAY_CALLBACKS_ALLOW_NETWORKS": '["127.0.0.0/8"]',
        "TOLLWAY_CALLBACKS_RETRY_BASE_S": "1",
        "TOLLWAY_CALLBACKS_RETRY_FACTOR": "2",
        "TOLLWAY_CALLBACKS_RETRY_MAX_DELAY_S": "8",
        "TOLLWAY_ROUTER_SESSION_TIMEOUT_MS": "6000",
        "TOLLWAY_ROUTER_MAX_POLL_INTERVAL_MS": "10000",
        "TOLLWAY_ANALYTICS_SESSION_TIMEOUT_MS": "6000",
        "TOLLWAY_BATCHES_SESSION_TIMEOUT_MS": "6000",
        "TOLLWAY_BATCHES_EXPAND_CHECKPOINT_LINES": "50",
        "TOLLWAY_COST_SESSION_TIMEOUT_S": "6",
        "TOLLWAY_BUDGET_SESSION_TIMEOUT_S": "6",
    }


@dataclass
class ChaosStack:
    """The stack, the receiver and a ClickHouse view; `start()` returns once a request
    went all the way through (result, webhook, ClickHouse row, priced usage)."""

    bootstrap: str
    workdir: Path = CHAOS_DIR
    mock_latency_ms: int = 20
    stack: Stack = field(init=False)
    receiver: Receiver = field(init=False)
    clickhouse: ClickHouseView | None = None
    warmup_ids: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.receiver = Receiver(new_secret(), free_port())
        mock_port = free_port()
        clickhouse_data = self.workdir / "clickhouse"
        shutil.rmtree(clickhouse_data, ignore_errors=True)
        self.stack = Stack(
            ingress_port=free_port(),
            mock_port=mock_port,
            clickhouse_port=free_port(),
            clickhouse_data=clickhouse_data,
            routers=2,
            mock_latency_ms=self.mock_latency_ms,
            log_dir=self.workdir / "logs",
            extra_env=_write_config(
                self.workdir, mock_port, self.receiver.url, self.receiver.secret
            ),
        )

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def clickhouse_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.clickhouse_port}"

    async def start(self) -> None:
        t0 = time.monotonic()
        await self.receiver.start()
        # The broker outlives earlier test runs: the loader reads only this run's records
        # (its group would otherwise load the backlog from the earliest offset), so the
        # fresh ClickHouse holds this run's rows only and table-wide counts are the run's.
        await commit_group_at_end(
            self.bootstrap, AnalyticsSettings().group_id, [t.name for t in LOADED_TOPICS]
        )
        await asyncio.to_thread(self.stack.start, self.bootstrap, 120.0)
        self.timings_s["processes_healthy"] = round(time.monotonic() - t0, 1)
        self.clickhouse = ClickHouseView(self.clickhouse_url)
        await self._warm_up()
        self.timings_s["pipeline_live"] = round(time.monotonic() - t0, 1)

    async def _warm_up(self) -> None:
        """Submit one async request every 2 s until one has its webhook, its ClickHouse
        row and its priced usage: every consumer has joined its group (a brand-new
        callbacks group starts at the end of its topics) and the chain works."""
        assert self.clickhouse is not None
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        async with httpx.AsyncClient(base_url=self.url, timeout=10.0) as client:
            while True:
                for component in self.stack.components:
                    assert component.alive(), f"{component.name} died; see {component.log_path}"
                assert time.monotonic() < deadline, "the pipeline never went live"
                body = {**chat_body("warm-up"), "callback_url": self.receiver.url}
                answer = await client.post("/v1/async/chat/completions", json=body)
                if answer.status_code == 202:
                    self.warmup_ids.append(answer.json()["id"])
                await asyncio.sleep(2.0)
                hooked = {d.subject_id for d in self.receiver.deliveries}
                try:
                    stored = await asyncio.to_thread(self.clickhouse.has_requests, self.warmup_ids)
                    if await asyncio.to_thread(self._priced, stored & hooked):
                        return
                except ClickHouseError:
                    pass  # the loader has not created the tables yet

    def _priced(self, ids: set[str]) -> bool:
        assert self.clickhouse is not None
        if not ids:
            return False
        query = "SELECT count() FROM tollway.usage WHERE request_id IN %(ids)s"
        rows = self.clickhouse.client.query(query, parameters={"ids": list(ids)}).result_rows
        return int(rows[0][0]) > 0

    async def stop(self) -> None:
        if self.clickhouse is not None:
            self.clickhouse.close()
        for component in self.stack.components:  # all at once: Stack.stop waits one by one
            component.signal(signal.SIGCONT)  # a fault may have left one stopped
            component.signal(signal.SIGTERM)
        await asyncio.to_thread(self.stack.stop)
        await self.receiver.stop()
