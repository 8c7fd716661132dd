"""Run the ingress with uvicorn (uvloop + httptools), wired to Kafka.

Per-request CPU (bench/sync_throughput.py): no access log, no proxy-headers
middleware, no Server header; the collector tuned once the clients are up.
"""

from __future__ import annotations

import logging

import uvicorn

from deploy.gc_tuning import tune_gc
from ingress.analytics_api import analytics_routes_for
from ingress.anthropic_api import anthropic_routes
from ingress.app import build_app
from ingress.batches_api import batches_routes
from ingress.files_api import MAX_HEADER_BYTES, files_routes
from ingress.idempotency_kafka import KafkaIdempotencyStore
from ingress.idempotency_middleware import IdempotencySettings, with_idempotency
from ingress.kafka_bus import KafkaBus
from ingress.settings import IngressSettings
from schemas.routes import load_routes
from schemas.settings import KafkaSettings
from workers.batches.budget import batch_budgets_for
from workers.batches.filestore import LocalFileStore
from workers.batches.jsonl import MAX_FILE_BYTES
from workers.batches.settings import BatchesSettings
from workers.batches.view import KafkaBatchView
from workers.budget.ownership import Ownership
from workers.budget.view import BudgetView, EnforcementSettings


def run(kafka: KafkaSettings, settings: IngressSettings) -> None:
    routes = load_routes(settings.routes_file)
    enforcement = EnforcementSettings()
    budgets_config = enforcement.load()
    budgets = (  # only with budgets: otherwise nothing on the request path (docs/decisions/0009)
        BudgetView(kafka, budgets_config, stale_after_s=enforcement.stale_after_s)
        if budgets_config.budgets
        else None
    )
    bus = KafkaBus(
        kafka,
        client_id="tollway-ingress",
        result_index_max=settings.result_index_max,
        key_of=Ownership(budgets_config).key_of if budgets is not None else None,
    )
    store = LocalFileStore(BatchesSettings().store_dir)
    view = KafkaBatchView(kafka, client_id="tollway-ingress-batches")
    batch_budgets = batch_budgets_for(budgets, routes)  # None without budgets
    idempotency = IdempotencySettings()
    keys = KafkaIdempotencyStore(kafka, idempotency)

    async def start() -> None:
        await bus.start()
        if budgets is not None:
            await budgets.start()
        await view.start()
        if idempotency.enabled:
            await keys.start()
        tune_gc()  # clients started: freeze the start-up heap (deploy/gc_tuning.py)

    async def stop() -> None:
        await keys.stop()
        await view.stop()
        if budgets is not None:
            await budgets.stop()
        await bus.stop()

    app = build_app(
        settings,
        routes,
        bus,
        lifespan_hooks=(start, stop),
        budgets=budgets,
        extra_routes=[
            anthropic_routes,
            lambda _: [*files_routes(store), *batches_routes(store, view, budgets=batch_budgets)],
            analytics_routes_for,
        ],
    )
    logging.getLogger("tollway.ingress").info("ingress on %s:%s", settings.host, settings.port)
    uvicorn.run(
        with_idempotency(
            app,
            keys,
            idempotency,
            max_body_bytes=settings.max_body_bytes,
            max_upload_bytes=MAX_FILE_BYTES + MAX_HEADER_BYTES,
        ),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        # no handler reads the client address, so X-Forwarded-* need no middleware
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        backlog=4096,
        # longer than common client idle timeouts, so a pooled client does not reuse a
        # connection the server is closing at that moment
        timeout_keep_alive=75,
    )
