"""Run the ingress with uvicorn (uvloop + httptools), wired to Kafka."""

from __future__ import annotations

import logging

import uvicorn

from ingress.app import build_app
from ingress.kafka_bus import KafkaBus
from ingress.settings import IngressSettings
from schemas.routes import load_routes
from schemas.settings import KafkaSettings


def run(kafka: KafkaSettings, settings: IngressSettings) -> None:
    routes = load_routes(settings.routes_file)
    bus = KafkaBus(kafka, client_id="tollway-ingress", result_index_max=settings.result_index_max)
    app = build_app(settings, routes, bus, lifespan_hooks=(bus.start, bus.stop))
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
    )
