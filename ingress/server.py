"""Run the ingress with uvicorn (uvloop + httptools), wired to Kafka."""

from __future__ import annotations

import logging

import uvicorn

from ingress.anthropic_api import anthropic_routes
from ingress.app import build_app
from ingress.batches_api import batches_routes
from ingress.files_api import files_routes
from ingress.kafka_bus import KafkaBus
from ingress.settings import IngressSettings
from schemas.routes import load_routes
from schemas.settings import KafkaSettings
from workers.batches.filestore import LocalFileStore
from workers.batches.settings import BatchesSettings
from workers.batches.view import KafkaBatchView


def run(kafka: KafkaSettings, settings: IngressSettings) -> None:
    routes = load_routes(settings.routes_file)
    bus = KafkaBus(kafka, client_id="tollway-ingress", result_index_max=settings.result_index_max)
    store = LocalFileStore(BatchesSettings().store_dir)
    view = KafkaBatchView(kafka, client_id="tollway-ingress-batches")

    async def start() -> None:
        await bus.start()
        await view.start()

    async def stop() -> None:
        await view.stop()
        await bus.stop()

    app = build_app(
        settings,
        routes,
        bus,
        lifespan_hooks=(start, stop),
        extra_routes=[
            anthropic_routes,
            lambda _: [*files_routes(store), *batches_routes(store, view)],
        ],
    )
    logging.getLogger("tollway.ingress").info("ingress on %s:%s", settings.host, settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
        backlog=4096,
        # longer than common client idle timeouts, so a pooled client does not reuse a
        # connection the server is closing at that moment
        timeout_keep_alive=75,
    )
