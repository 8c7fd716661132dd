"""Start and stop Tollway's processes: the local stack behind `tollway up` and the e2e tests.

Every component runs as its own OS process (`python -m deploy.cli <component>`),
exactly as it would be deployed, with its output in `.tollway/logs/`. Kafka is
started by `deploy/kafka/kafka.sh` (Apache Kafka jars from Maven Central).

Authentication: virtual keys (`TOLLWAY_AUTH=keys`) unless the environment or
`extra_env` says `TOLLWAY_AUTH=open`; the stack then makes team `default` and one key
for it under the state directory (deploy/local_tenancy.py) and keeps it in `api_key`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from deploy.local_tenancy import LocalAuth, local_auth
from deploy.topics import ensure_topics
from schemas.batch_topics import ALL_BATCH_AND_CALLBACK_TOPICS
from schemas.topics import ALL_TOPICS
from workers.callbacks.webhooks_file import FILE_NAME, ensure_webhooks_file

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "kafka.sh"
STATE_DIR = Path(os.environ.get("TOLLWAY_STATE_DIR", REPO_ROOT / ".tollway"))


class StackError(RuntimeError):
    """A component did not start; the message names it and where its log is."""


def kafka(command: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `kafka.sh <command>` (start | stop | status | reset | bootstrap)."""
    return subprocess.run(
        ["bash", str(KAFKA_SCRIPT), command],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def start_kafka() -> str:
    """Start (or reuse) the local broker and create the topics; returns the bootstrap address."""
    done = kafka("start")
    if done.returncode != 0:
        raise StackError(f"Kafka did not start:\n{done.stdout}\n{done.stderr}")
    bootstrap = kafka("bootstrap").stdout.strip()
    asyncio.run(ensure_topics(bootstrap, ALL_TOPICS + ALL_BATCH_AND_CALLBACK_TOPICS))
    return bootstrap


METRICS_PORT_ENV: dict[str, str] = {
    "ingress": "TOLLWAY_INGRESS_METRICS_PORT",
    "router": "TOLLWAY_ROUTER_METRICS_PORT",
    "cost-processor": "TOLLWAY_COST_METRICS_PORT",
    "budget-processor": "TOLLWAY_BUDGET_METRICS_PORT",
    "loader": "TOLLWAY_ANALYTICS_LOADER_METRICS_PORT",
    "callbacks": "TOLLWAY_CALLBACKS_METRICS_PORT",
    "batches-worker": "TOLLWAY_BATCHES_METRICS_PORT",
}
"""The metrics-port variable of each `tollway` command that serves /metrics."""


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def expose_metrics(component: Component) -> None:
    """Give `component` a free loopback metrics port of its own (replicas share no
    variable: each gets its own env copy) and record the URL in `metrics_url`."""
    variable = METRICS_PORT_ENV.get(component.args[0])
    if variable is None:
        return
    port = free_loopback_port()
    component.env = {**component.env, variable: str(port)}
    component.metrics_url = f"http://127.0.0.1:{port}/metrics"


@dataclass
class Component:
    name: str
    args: list[str]
    env: dict[str, str]
    health_url: str | None = None
    metrics_url: str | None = None
    """Its Prometheus /metrics listener (set by `Stack.plan`; docs/metrics.md)."""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", *self.args],
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process is not None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Stack:
    """The processes of one local Tollway; `start()` returns when all are healthy."""

    ingress_port: int = 8000
    mock_port: int = 18080
    clickhouse_port: int = 18123
    clickhouse_data: Path = STATE_DIR / "clickhouse"
    """chdb allows one process per data path: give each stack its own."""
    routers: int = 1
    use_mock: bool = True
    mock_latency_ms: int = 50
    extra_env: dict[str, str] = field(default_factory=dict)
    log_dir: Path = STATE_DIR / "logs"
    webhooks_file: Path = STATE_DIR / FILE_NAME
    """Created once (0600, a fresh `whsec_` secret for team `default`) unless
    TOLLWAY_CALLBACKS_WEBHOOKS_FILE names another (workers/callbacks/webhooks_file.py)."""
    components: list[Component] = field(default_factory=list)
    auth: LocalAuth | None = None
    """Set by `plan`: the auth mode, and in keys mode the key of team `default`."""

    @property
    def api_key(self) -> str | None:
        """The virtual key of team `default` (keys mode), None in open mode or before `plan`."""
        return None if self.auth is None else self.auth.api_key

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    def plan(self, bootstrap: str) -> list[Component]:
        self.auth = local_auth(STATE_DIR, {**os.environ, **self.extra_env})
        env = {
            "TOLLWAY_KAFKA_BOOTSTRAP": bootstrap,
            "TOLLWAY_BATCHES_STORE_DIR": str(STATE_DIR / "files"),
            **self.auth.env,
            **self.extra_env,
        }
        if self.use_mock:
            env.setdefault("TOLLWAY_MOCK_URL", f"http://127.0.0.1:{self.mock_port}/v1")
        parts: list[Component] = []
        if self.use_mock:
            parts.append(
                Component(
                    "mock-provider",
                    [
                        "mock-provider",
                        "--port",
                        str(self.mock_port),
                        "--latency-ms",
                        str(self.mock_latency_ms),
                    ],
                    env,
                    f"http://127.0.0.1:{self.mock_port}/healthz",
                )
            )
        parts.extend(Component(f"router-{i}", ["router"], env) for i in range(1, self.routers + 1))
        if "CLICKHOUSE_URL" not in os.environ:  # else: a real server, as configured
            env["CLICKHOUSE_URL"] = f"http://127.0.0.1:{self.clickhouse_port}"
            parts.append(Component(
                "clickhouse",
                ["analytics", "serve", "--port", str(self.clickhouse_port),
                 "--data-path", str(self.clickhouse_data)],
                env, f"http://127.0.0.1:{self.clickhouse_port}/ping",
            ))  # fmt: skip
        parts.append(Component("loader", ["loader"], env))
        parts.append(Component("cost-processor", ["cost-processor"], env))
        parts.append(Component("budget-processor", ["budget-processor"], env))
        parts.append(Component("batches-worker", ["batches-worker"], env))
        webhooks = {**os.environ, **env}.get("TOLLWAY_CALLBACKS_WEBHOOKS_FILE")
        if webhooks is None:
            ensure_webhooks_file(self.webhooks_file)
            webhooks = str(self.webhooks_file)
        self.webhooks_file = Path(webhooks)
        callbacks_env = {**env, "TOLLWAY_CALLBACKS_WEBHOOKS_FILE": webhooks}
        parts.append(Component("callbacks", ["callbacks"], callbacks_env))
        parts.append(
            Component(
                "ingress",
                ["ingress"],
                {**env, **self.auth.ingress_env, "TOLLWAY_INGRESS_PORT": str(self.ingress_port)},
                f"{self.url}/readyz",
            )
        )
        for part in parts:
            expose_metrics(part)
        return parts

    def start(self, bootstrap: str, timeout_s: float = 60.0) -> None:
        self.components = self.plan(bootstrap)
        try:
            for component in self.components:
                component.start(self.log_dir)
            deadline = time.monotonic() + timeout_s
            for component in self.components:
                self.wait_healthy(component, deadline)
        except BaseException:
            self.stop()  # a failed start leaves no orphan processes behind
            raise

    def wait_healthy(self, component: Component, deadline: float) -> None:
        while True:
            if not component.alive():
                raise StackError(f"{component.name} exited; see {component.log_path}")
            if component.health_url is None:
                return
            try:
                if httpx.get(component.health_url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{component.name} not healthy in time; see {component.log_path}")
            time.sleep(0.2)

    def get(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def restart(self, name: str) -> None:
        component = self.get(name)
        component.stop()
        component.start(self.log_dir)
        self.wait_healthy(component, time.monotonic() + 60)

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()
