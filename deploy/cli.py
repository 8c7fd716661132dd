"""`tollway` command line: run the stack or any single component.

tollway up                 Kafka + mock provider + router + ingress, until Ctrl-C
tollway ingress            the HTTP ingress (settings: TOLLWAY_INGRESS_*)
tollway router             a routing worker (settings: TOLLWAY_ROUTER_*)
tollway mock-provider      the mock LLM provider (OpenAI wire format)
tollway kafka start|stop|status|reset
tollway topics             create Tollway's topics (idempotent)
tollway teams|keys|budgets the admin API from a shell (deploy/admin_cli.py)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Final

from schemas.settings import KafkaSettings

SERVICES: Final = frozenset(
    {
        "ingress",
        "router",
        "mock-provider",
        "cost-processor",
        "budget-processor",
        "loader",
        "batches-worker",
        "callbacks",
        "clickhouse",
    }
)
"""The long-running processes: JSON logs by default, and traced when tracing is on
(workers/telemetry/logs.py, workers/telemetry/tracing.py)."""


def component_of(args: argparse.Namespace) -> str:
    """The process's component name: the command (`analytics serve` is `clickhouse`)."""
    command = str(args.command)
    if command == "analytics" and getattr(args, "analytics_command", None) == "serve":
        return "clickhouse"
    return command


def _logging(component: str = "tollway") -> None:
    """Logs as TOLLWAY_LOG_FORMAT says (json for the services, text for interactive
    commands, by default), secrets redacted; spans as TOLLWAY_OTEL_EXPORTER says."""
    from workers.telemetry.logs import configure_logging
    from workers.telemetry.tracing import setup_tracing

    service = component in SERVICES
    configure_logging(
        component,
        level=os.environ.get("TOLLWAY_LOG_LEVEL", "INFO"),
        default_format="json" if service else "text",
    )
    if service:
        setup_tracing(f"tollway-{component}")
    # httpx logs every request at INFO: on the router's hot path that is CPU per call.
    for noisy in ("aiokafka", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_ingress(_: argparse.Namespace) -> int:
    from ingress.server import run
    from ingress.settings import IngressSettings

    run(KafkaSettings(), IngressSettings())
    return 0


def _cmd_router(_: argparse.Namespace) -> int:
    import uvloop

    from deploy.gc_tuning import tune_gc
    from workers.router.consumer import serve
    from workers.router.settings import RouterSettings

    tune_gc()  # ~9 % of the router's CPU went to the collector (deploy/gc_tuning.py)
    uvloop.run(serve(KafkaSettings(), RouterSettings()))
    return 0


def _cmd_mock(args: argparse.Namespace) -> int:
    from workers.providers.mock.behaviour import MockSettings
    from workers.providers.mock.server import run

    settings = MockSettings(
        latency_ms=args.latency_ms,
        completion_tokens=args.completion_tokens,
        seed=args.seed,
        stream_chunk_interval_ms=args.stream_chunk_interval_ms,
    )
    run(args.host, args.port, settings)
    return 0


def _cmd_cost(_: argparse.Namespace) -> int:
    from deploy.gc_tuning import tune_gc
    from workers.cost.agent import run_cost_processor

    tune_gc()  # per-event allocations: collect in larger batches (deploy/gc_tuning.py)
    run_cost_processor()
    return 0


def _cmd_budget(_: argparse.Namespace) -> int:
    from deploy.gc_tuning import tune_gc
    from workers.budget.agent import run_budget_processor

    tune_gc()  # per-event allocations: collect in larger batches (deploy/gc_tuning.py)
    run_budget_processor()
    return 0


def _cmd_kafka(args: argparse.Namespace) -> int:
    from deploy.stack import kafka

    done = kafka(args.action)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


def _cmd_topics(_: argparse.Namespace) -> int:
    from deploy.topics import ensure_topics
    from schemas.batch_topics import ALL_BATCH_AND_CALLBACK_TOPICS
    from schemas.topics import ALL_TOPICS

    wanted = ALL_TOPICS + ALL_BATCH_AND_CALLBACK_TOPICS
    created = asyncio.run(ensure_topics(KafkaSettings().bootstrap, wanted))
    print("created: " + (", ".join(created) if created else "nothing (all exist)"))
    return 0


_QUICKSTART = """
Tollway is up: {url}
  logs: {logs}
  webhooks: {webhooks} (signing secret and endpoints; edit, then restart)
  {auth}

  curl {url}/v1/chat/completions -H 'content-type: application/json' \\
    -H 'authorization: Bearer {api_key}' \\
    -d '{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="{api_key}")
  reply = client.chat.completions.create(
      model="gpt-4o-mini", messages=[{{"role": "user", "content": "Hello"}}])
  print(reply.choices[0].message.content)
  PY

Ctrl-C stops everything.
"""


def _cmd_up(args: argparse.Namespace) -> int:
    from deploy.local_tenancy import auth_summary
    from deploy.stack import STATE_DIR, Stack, StackError, kafka, start_kafka
    from workers.tenancy.pepper_file import FILE_NAME, ensure_pepper_file

    use_mock = not os.environ.get("OPENAI_API_KEY")
    if not os.environ.get("TOLLWAY_KEY_PEPPER"):  # every component inherits it
        os.environ["TOLLWAY_KEY_PEPPER"] = ensure_pepper_file(STATE_DIR / FILE_NAME)
    stack = Stack(
        ingress_port=args.port,
        mock_port=args.mock_port,
        routers=args.routers,
        use_mock=use_mock,
        mock_latency_ms=args.mock_latency_ms,
    )
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print("starting Kafka (first run downloads the jars once)...", flush=True)
    try:
        bootstrap = start_kafka()
        print(f"Kafka ready at {bootstrap}; starting Tollway processes...", flush=True)
        stack.start(bootstrap)
        print(
            _QUICKSTART.format(
                url=stack.url,
                logs=stack.log_dir,
                webhooks=stack.webhooks_file,
                api_key=stack.api_key or "any",
                auth=auth_summary(stack.auth),
            ),
            flush=True,
        )
        print("Prometheus metrics (docs/metrics.md):", flush=True)
        for component in stack.components:
            if component.metrics_url is not None:
                print(f"  {component.name:<17} {component.metrics_url}", flush=True)
        while not stopping:
            dead = [c.name for c in stack.components if not c.alive()]
            if dead:
                print(
                    f"process(es) exited: {', '.join(dead)}; see {stack.log_dir}", file=sys.stderr
                )
                return 1
            time.sleep(0.5)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        stack.stop()
        if not args.keep_kafka:
            kafka("stop")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="tollway", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = root.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole local stack until Ctrl-C")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--mock-port", type=int, default=18080)
    up.add_argument("--mock-latency-ms", type=int, default=50)
    up.add_argument("--routers", type=int, default=1)
    up.add_argument("--keep-kafka", action="store_true", help="leave Kafka running on exit")
    up.set_defaults(func=_cmd_up)
    sub.add_parser("ingress", help="run the HTTP ingress").set_defaults(func=_cmd_ingress)
    sub.add_parser("router", help="run a routing worker").set_defaults(func=_cmd_router)
    mock = sub.add_parser("mock-provider", help="run the mock LLM provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=18080)
    mock.add_argument("--latency-ms", type=int, default=50)
    mock.add_argument("--completion-tokens", type=int, default=16)
    mock.add_argument("--seed", type=int, default=0)
    mock.add_argument("--stream-chunk-interval-ms", type=int, default=0)
    mock.set_defaults(func=_cmd_mock)
    kafka = sub.add_parser("kafka", help="manage the local Kafka broker")
    kafka.add_argument("action", choices=["start", "stop", "status", "reset", "bootstrap"])
    kafka.set_defaults(func=_cmd_kafka)
    sub.add_parser("topics", help="create the topics").set_defaults(func=_cmd_topics)
    from workers.batches.cli import add_commands as add_batch_commands
    from workers.callbacks.cli import add_commands as add_callback_commands

    add_batch_commands(sub)
    add_callback_commands(sub)
    from analytics.cli import add_commands as add_analytics_commands

    add_analytics_commands(sub)
    from deploy.admin_cli import add_commands as add_admin_commands

    add_admin_commands(sub)
    sub.add_parser("cost-processor", help="price provider calls (faust)").set_defaults(
        func=_cmd_cost
    )
    sub.add_parser("budget-processor", help="rolling budget windows (faust)").set_defaults(
        func=_cmd_budget
    )
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _logging(component_of(args))
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
