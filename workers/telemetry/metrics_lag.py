"""Consumer lag of a process's consumer groups, read from Kafka on a thread of its own.

Lag = end offset minus committed offset, per partition, summed by topic
(`metrics_labels.consumer_lag`). It is read the way an outside lag exporter reads
it (the group's committed offsets from its coordinator, end offsets from the
partition leaders), so it measures what matters after a crash (what would be
re-read), works the same for aiokafka loops and faust agents, and never touches the
process's event loop or its consumers: the monitor runs its own loop on a daemon
thread with its own admin client and group-less consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from workers.telemetry.metrics import LagMetrics
from workers.telemetry.metrics_labels import consumer_lag

log = logging.getLogger("tollway.metrics")

_WARN_EVERY_S: Final = 60.0


class LagMonitor:
    """Sets `tollway_consumer_lag_records{group, topic}` every `interval_s`."""

    def __init__(
        self, bootstrap: str, groups: tuple[str, ...], metrics: LagMetrics, interval_s: float
    ) -> None:
        self.bootstrap = bootstrap
        self.groups = groups
        self.metrics = metrics
        self.interval_s = interval_s
        self._last_warning = -_WARN_EVERY_S

    def run(self) -> None:
        """The thread's body: its own event loop, until the process exits."""
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="tollway-lag")
        ends = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, client_id="tollway-lag"
        )
        started = False
        while True:
            try:
                if not started:
                    await admin.start()
                    await ends.start()
                    started = True
                for group in self.groups:
                    await self.read(admin, ends, group)
            except (KafkaError, OSError, TimeoutError) as exc:
                now = time.monotonic()
                if now - self._last_warning >= _WARN_EVERY_S:
                    self._last_warning = now
                    log.warning("consumer lag not read (%r); retrying", exc)
            await asyncio.sleep(self.interval_s)

    async def read(
        self, admin: AIOKafkaAdminClient, ends: AIOKafkaConsumer, group: str
    ) -> dict[str, int]:
        """Read one group's lag and set its gauges; returns it (records per topic)."""
        offsets = await admin.list_consumer_group_offsets(group)
        committed = {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}
        if not committed:
            return {}
        end_offsets = await ends.end_offsets(list(offsets))
        lag = consumer_lag(
            {(tp.topic, tp.partition): end for tp, end in end_offsets.items()}, committed
        )
        for topic, records in lag.items():
            self.metrics.lag.labels(group, topic).set(records)
        return lag
