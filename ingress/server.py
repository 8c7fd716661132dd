"""Run the ingress with uvicorn (uvloop + httptools), wired to Kafka.

Per-request CPU (bench/sync_throughput.py): no access log, no proxy-headers
middleware, no Server header; the collector tuned once the clients are up.

Request path, outermost first (`secured`): AuthMiddleware (the virtual key -> the
caller's team, ingress/auth.py) -> Idempotency-Key middleware (keys scoped by that team)
-> the Starlette app. The tenancy view is the admin mount's (one view per process,
ingress/admin_api.py): `TOLLWAY_AUTH=keys` (the default) needs it and
`TOLLWAY_KEY_PEPPER`; `open` logs a warning and reads no key.
"""

from __future__ import annotations

import logging
from typing import Final

import uvicorn
from starlette.routing import BaseRoute

from deploy.gc_tuning import tune_gc
from ingress.admin_api import admin_api_for
from ingress.analytics_api import analytics_routes_for
from ingress.anthropic_api import anthropic_routes
from ingress.app import Ingress, build_app
from ingress.auth import Authenticator, AuthMiddleware, warn_if_open
from ingress.batches_api import batches_routes
from ingress.bulk_api import bulk_routes
from ingress.dashboard_api import dashboard_routes_for
from ingress.files_api import MAX_HEADER_BYTES, files_routes
from ingress.idempotency import IdempotencyStore
from ingress.idempotency_kafka import KafkaIdempotencyStore
from ingress.idempotency_middleware import ASGIApp, IdempotencySettings, with_idempotency
from ingress.kafka_bus import KafkaBus
from ingress.openapi import openapi_routes
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
from workers.telemetry.metrics import start_metrics
from workers.telemetry.metrics_asgi import HttpMetricsMiddleware
from workers.telemetry.tracing_asgi import with_server_spans
from workers.tenancy.keys import PEPPER_SETTING, Pepper, PepperError
from workers.tenancy.model import TenancyView
from workers.tenancy.settings import TenancySettings

MAX_BATCHES_LISTED: Final = 1_000_000
"""A team's batches, all of them, for its queue cap (the view holds them in memory)."""


def authenticator_for(
    settings: IngressSettings, view: TenancyView, pepper: Pepper | None
) -> Authenticator:
    """The ingress's authenticator from `TOLLWAY_AUTH`: keys mode needs the pepper."""
    if settings.auth == "open":
        return Authenticator("open", view)
    if pepper is None:
        raise PepperError(
            f"TOLLWAY_AUTH=keys (the default) needs {PEPPER_SETTING}, the same value as where "
            "keys are issued; or set TOLLWAY_AUTH=open for development."
        )
    return Authenticator("keys", view, pepper.digest)


def secured(
    app: ASGIApp,
    authenticator: Authenticator,
    keys: IdempotencyStore,
    idempotency: IdempotencySettings,
    *,
    max_body_bytes: int,
    max_upload_bytes: int,
) -> ASGIApp:
    """The served ASGI app: authentication first, so the Idempotency-Key middleware scopes
    keys by the caller's team (the app's own AuthMiddleware then finds the principal)."""
    return with_server_spans(  # the root span of each request's trace, when tracing is on
        AuthMiddleware(
            with_idempotency(
                app,
                keys,
                idempotency,
                max_body_bytes=max_body_bytes,
                max_upload_bytes=max_upload_bytes,
            ),
            authenticator,
        )
    )


def run(kafka: KafkaSettings, settings: IngressSettings) -> None:
    routes = load_routes(settings.routes_file)
    enforcement = EnforcementSettings()
    budgets_config = enforcement.load()
    budgets = (  # only with budgets: otherwise nothing on the request path (docs/decisions/0009)
        BudgetView(kafka, budgets_config, stale_after_s=enforcement.stale_after_s)
        if budgets_config.budgets
        else None
    )
    admin = admin_api_for(
        kafka,
        settings,
        budgets=budgets_config,
        budget_states=(lambda: budgets.states) if budgets is not None else None,
        tenancy=TenancySettings(),
    )
    tenancy = admin.service.view
    authenticator = authenticator_for(settings, tenancy, admin.service.pepper)
    warn_if_open(authenticator)
    bus = KafkaBus(
        kafka,
        client_id="tollway-ingress",
        result_index_max=settings.result_index_max,
        key_of=Ownership(budgets_config).key_of if budgets is not None else None,
        tenancy=tenancy,
    )
    store = LocalFileStore(BatchesSettings().store_dir)
    view = KafkaBatchView(kafka, client_id="tollway-ingress-batches")
    batch_budgets = batch_budgets_for(budgets, routes)  # None without budgets
    idempotency = IdempotencySettings()
    keys = KafkaIdempotencyStore(kafka, idempotency)

    async def start() -> None:
        await admin.start()  # the config topics read to their end (else the start fails)
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
        await admin.stop()

    def batch_surface(ingress: Ingress) -> list[BaseRoute]:
        return [
            *files_routes(store),
            *batches_routes(store, view, budgets=batch_budgets, gatekeeper=ingress.gatekeeper),
        ]

    app = build_app(
        settings,
        routes,
        bus,
        lifespan_hooks=(start, stop),
        budgets=budgets,
        authenticator=authenticator,
        batch_states=lambda team_id: view.list(team_id, MAX_BATCHES_LISTED, None)[0],
        extra_routes=[
            anthropic_routes,
            bulk_routes,
            batch_surface,
            analytics_routes_for,
            lambda _: admin.routes,
            lambda ingress: dashboard_routes_for(ingress, budgets_config.budgets),
            openapi_routes,
        ],
    )
    logging.getLogger("tollway.ingress").info(
        "ingress on %s:%s (TOLLWAY_AUTH=%s)", settings.host, settings.port, settings.auth
    )
    start_metrics("ingress", settings.metrics_port)  # its own port (docs/decisions/0018)
    uvicorn.run(
        HttpMetricsMiddleware(  # outermost: 401s and idempotent replays are counted too
            secured(
                app,
                authenticator,
                keys,
                idempotency,
                max_body_bytes=settings.max_body_bytes,
                max_upload_bytes=MAX_FILE_BYTES + MAX_HEADER_BYTES,
            )
        ),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        log_config=None,  # uvicorn's loggers go through the process's format (deploy/cli.py)
        # no handler reads the client address, so X-Forwarded-* need no middleware
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        backlog=4096,
        # longer than common client idle timeouts, so a pooled client does not reuse a
        # connection the server is closing at that moment
        timeout_keep_alive=75,
    )
