"""Tenancy in one process: the config view, and on the admin side the writer and bootstrap.

    view       KafkaTenancyView: every service (ingress auth, routers) reads it
    admin      TenancyAdmin over KafkaConfigWriter: only where the admin API runs or a
               bootstrap file is configured (TOLLWAY_ADMIN_KEY / TOLLWAY_TENANCY_BOOTSTRAP_FILE)

`start()` returns once the view has read the config topics to their end (bounded by
`TOLLWAY_TENANCY_READY_TIMEOUT_S`, else it raises and the process does not start: it
must not serve with an unknown config) and the bootstrap file has been applied. The
bootstrap file is parsed in the constructor, so a broken file fails the process
before it touches Kafka. Several admin replicas starting at the same moment may each
write the same bootstrap change once (each audited); every later start writes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from schemas.settings import KafkaSettings
from workers.tenancy.admin import Actor, TenancyAdmin, wall_ms
from workers.tenancy.bootstrap import BootstrapFile, desired_records, load_bootstrap, plan
from workers.tenancy.config_kafka import KafkaConfigWriter, KafkaTenancyView
from workers.tenancy.keys import PEPPER_SETTING, Pepper, PepperError
from workers.tenancy.settings import TenancySettings
from workers.tenancy.store import ConfigValue, TenancyStore

log = logging.getLogger("tollway.tenancy")


class TenancyNotReady(RuntimeError):
    """The config topics could not be read to their end in time: the process must not serve."""


class TenancyService:
    """The view (always) and the admin side (when `admin` or a bootstrap file asks for it)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: TenancySettings,
        *,
        admin: bool,
        client_id: str = "tollway-tenancy",
        environ: Mapping[str, str] = os.environ,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.settings = settings
        self.pepper: Pepper | None = settings.pepper()
        if admin and self.pepper is None:
            raise PepperError(
                f"{PEPPER_SETTING} must be set where the admin API runs (it digests new keys)."
            )
        self.bootstrap: BootstrapFile | None = (
            load_bootstrap(settings.bootstrap_file) if settings.bootstrap_file else None
        )
        self._environ = environ
        self._clock_ms = clock_ms
        self.view = KafkaTenancyView(kafka, client_id=f"{client_id}-config")
        self.writer: KafkaConfigWriter | None = None
        self.admin: TenancyAdmin | None = None
        if admin or self.bootstrap is not None:
            self.writer = KafkaConfigWriter(
                kafka, client_id=f"{client_id}-admin", timeout_s=settings.write_timeout_s
            )
            self.admin = TenancyAdmin(
                self.view.store,
                self.writer,
                self.pepper,
                sync=self.sync,
                clock_ms=clock_ms,
            )

    async def sync(self) -> None:
        """Bring the view up to the topics' end (503 after `catch_up_timeout_s`)."""
        await self.view.catch_up(self.settings.catch_up_timeout_s)

    async def start(self) -> None:
        await self.view.start()
        if not await self.view.wait_ready(self.settings.ready_timeout_s):
            await self.view.stop()
            raise TenancyNotReady(
                f"the tenancy config topics were not read within {self.settings.ready_timeout_s}"
                " s (TOLLWAY_TENANCY_READY_TIMEOUT_S); is Kafka reachable?"
            )
        log.info(
            "tenancy config loaded: %d teams, %d keys, %d tag policies",
            len(self.view.store.teams()),
            len(self.view.store.keys()),
            len(self.view.store.tag_policies()),
        )
        if self.writer is not None:
            await self.writer.start()
        await self.apply_bootstrap()

    async def stop(self) -> None:
        if self.writer is not None:
            await self.writer.stop()
        await self.view.stop()

    async def apply_bootstrap(self) -> int:
        """Upsert the bootstrap file's records; returns how many were written."""
        if self.bootstrap is None or self.admin is None:
            return 0
        file = self.bootstrap

        def changes(store: TenancyStore) -> list[ConfigValue]:
            desired = desired_records(file, self.pepper, self._environ, self._clock_ms())
            return plan(desired, store)

        name = self.settings.bootstrap_file.name if self.settings.bootstrap_file else "file"
        applied = await self.admin.upsert(changes, Actor(f"bootstrap:{name}", "bootstrap"))
        log.info("tenancy bootstrap %s: %d records written", name, len(applied))
        return len(applied)
