"""Cost processor wiring: tollway.attempts -> price each provider call -> tollway.usage.

    in:  tollway.attempts        (faust app / consumer group `tollway-cost`)
    out: tollway.usage           one UsageRecord per call that consumed tokens, key team_id
         tollway.dead-letters    attempts that cannot be decoded

Guarantee: at-least-once with an idempotency key. A batch's usage records are
acknowledged by Kafka (acks=all) before the batch's attempts are acked to
faust, whose offset commits follow; a crash re-prices the uncommitted tail and
re-emits records with the same `usage_id` (`<request_id>:<attempt_id>`), which
every consumer dedups (the budget processor within its horizon, ClickHouse by
key). A failure that cannot be retried stops the process WITHOUT acking: faust
would otherwise ack a batch whose generator is closed by the exception.

Pricing is `usage.price_attempt` (pure) over the catalogue loaded once at start;
a call whose model has no price becomes `cost_status=unpriced` and an alert in
the log (`tollway.cost.alert`, at most once a minute per model), never $0.

Run: `python -m workers.cost.agent` or `run_cost_processor()` (settings:
`TOLLWAY_KAFKA_BOOTSTRAP`, `TOLLWAY_COST_*`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import faust

from schemas import codec, topics
from schemas.errors import CorruptRecord
from schemas.records import UsageRecord
from schemas.settings import KafkaSettings
from workers.cost.catalogue import Catalogue, load_catalogue, load_overrides
from workers.cost.settings import CostSettings
from workers.cost.usage import price_attempt
from workers.faust_app import (
    Outgoing,
    batch_agent,
    create_processor_app,
    dead_letter,
    raw_topic,
    run_processor,
    send_all,
)
from workers.telemetry.metrics import cost_metrics, dead_letter_metrics, start_metrics
from workers.telemetry.tracing import inject_headers, set_attributes, start_span

log = logging.getLogger("tollway.cost")
alert_log = logging.getLogger("tollway.cost.alert")

_ALERT_EVERY_MS = 60_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class UnpricedAlerts:
    """Logs an alert per unpriced model at most once a minute, with the count since."""

    def __init__(self) -> None:
        self._last_ms: dict[tuple[str, str], int] = {}
        self._count: dict[tuple[str, str], int] = {}

    def record(self, usage: UsageRecord, now_ms: int) -> None:
        model = (usage["provider"], usage["model"])
        self._count[model] = self._count.get(model, 0) + 1
        if now_ms - self._last_ms.get(model, -_ALERT_EVERY_MS) >= _ALERT_EVERY_MS:
            alert_log.error(
                "ALERT unpriced usage: %s/%s has no price in catalogue %s (%d calls); "
                "recorded with cost_status=unpriced - add it to the catalogue or overrides",
                model[0],
                model[1],
                usage["pricing_version"],
                self._count[model],
            )
            self._last_ms[model] = now_ms
            self._count[model] = 0


class CostProcessor:
    """Prices one batch of attempt events and publishes the usage records."""

    def __init__(self, app: faust.App, catalogue: Catalogue) -> None:
        self.app = app
        self.catalogue = catalogue
        self.alerts = UnpricedAlerts()
        self.counts = {"attempts": 0, "usage": 0, "unpriced": 0, "dead": 0}

    async def process(self, events: Sequence[Any]) -> None:
        now = wall_ms()
        outgoing: list[Outgoing] = []
        priced: list[UsageRecord] = []
        dead = 0
        for event in events:
            self.counts["attempts"] += 1
            try:
                attempt = codec.decode("attempt", event.value)
            except CorruptRecord as exc:
                self.counts["dead"] += 1
                dead += 1
                outgoing.append(dead_letter(event, exc))
                continue
            with start_span(  # a child of the router's span, from the headers (0019)
                f"process {topics.ATTEMPTS.name}",
                kind="consumer",
                headers=event.message.headers,
                attributes={"tollway.request_id": attempt["request_id"]},
            ):
                usage = price_attempt(attempt, self.catalogue, priced_at_ms=now)
                if usage is not None:
                    set_attributes({"tollway.cost_status": usage["cost_status"]})
                headers = inject_headers()  # the usage record continues the request's trace
            if usage is None:
                continue
            if usage["cost_status"] == "unpriced":
                self.counts["unpriced"] += 1
                self.alerts.record(usage, now)
            self.counts["usage"] += 1
            priced.append(usage)
            outgoing.append(
                (
                    topics.USAGE.name,
                    usage["team_id"].encode(),
                    codec.encode("usage", usage),
                    headers,
                    None,
                )
            )
        await send_all(self.app, outgoing)
        metrics = cost_metrics()  # counted once Kafka has the records
        for usage in priced:
            metrics.usage_record(
                usage["model"],
                usage["cost_status"],
                usage["prompt_tokens"],
                usage["completion_tokens"],
                usage["cost_nano_usd"],
            )
        if dead:
            dead_letter_metrics().published.labels(topics.DEAD_LETTERS.name).inc(dead)


def build_cost_app(kafka: KafkaSettings, settings: CostSettings, catalogue: Catalogue) -> faust.App:
    """The cost processor's faust app: one agent over tollway.attempts."""
    app = create_processor_app(kafka.bootstrap, settings)
    processor = CostProcessor(app, catalogue)
    batch_agent(
        app,
        raw_topic(app, topics.ATTEMPTS),
        name="price-attempts",
        settings=settings,
        handle=processor.process,
        what="pricing a batch",
    )

    async def report() -> None:
        log.info("cost processor: %s (catalogue %s)", processor.counts, catalogue.version)

    async def started() -> None:
        log.info("cost processor: catalogue %s (%d models)", catalogue.version, len(catalogue))

    app.timer(interval=30.0, name="cost-report")(report)
    app.task(started)
    return app


def run_cost_processor(
    kafka: KafkaSettings | None = None, settings: CostSettings | None = None
) -> None:
    """Run the cost processor in this process until SIGTERM/SIGINT (never returns)."""
    kafka = kafka or KafkaSettings()
    settings = settings or CostSettings()
    catalogue = load_catalogue(
        settings.catalogue_file, load_overrides(settings.price_overrides_file)
    )
    start_metrics(
        "cost-processor",
        settings.metrics_port,
        bootstrap=kafka.bootstrap,
        lag_groups=(settings.app_id,),  # the faust app id is its consumer group
    )
    run_processor(kafka.bootstrap, settings, partial(build_cost_app, kafka, settings, catalogue))


if __name__ == "__main__":
    run_cost_processor()
