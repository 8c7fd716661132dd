"""Tenancy config on the real broker: the admin API on one replica, an independent view as
another replica, the audit topic, bootstrap restarts, and fail-closed decoding.

Figures printed with `-s`: how long after the admin API answered the other replica saw the
change (created key usable, revoked key refused).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ingress.admin_api import admin_api_for
from ingress.app import build_app
from ingress.bus import MemoryBus
from ingress.settings import IngressSettings
from schemas import topics
from schemas.routes import default_routes
from schemas.settings import KafkaSettings
from tests.integration.kafka_io import produce
from workers.tenancy.config_kafka import KafkaTenancyView
from workers.tenancy.keys import Pepper
from workers.tenancy.service import TenancyService
from workers.tenancy.settings import TenancySettings
from workers.tenancy.wire import decode_audit

pytestmark = pytest.mark.kafka

ADMIN_KEY: Final = "integration-admin-key-0123456789abcdef"
PEPPER_TEXT: Final = "integration-pepper-0123456789abcdef-xyz"
PEPPER: Final = Pepper(PEPPER_TEXT)
PROPAGATION_BOUND_S: Final = 1.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _never(_: object) -> None:
    return None


class AdminReplica:
    """An ingress's admin side: the tenancy service and the admin routes over ASGI."""

    def __init__(self, bootstrap: str, bootstrap_file: Path | None = None) -> None:
        settings = IngressSettings(id_secret="it", admin_key=ADMIN_KEY, auth="open")
        tenancy = TenancySettings(key_pepper=PEPPER_TEXT, bootstrap_file=bootstrap_file)
        self.mount = admin_api_for(
            KafkaSettings(bootstrap=bootstrap),
            settings,
            tenancy=tenancy,
            environ={"IT_BOOTSTRAP_KEY": BOOTSTRAP_PLAIN},
        )
        app = build_app(
            settings,
            default_routes({}),
            MemoryBus(_never),
            extra_routes=[lambda _: self.mount.routes],
        )
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://admin",
            headers={"authorization": f"Bearer {ADMIN_KEY}", "x-tollway-actor": "it"},
            timeout=30,
        )

    async def start(self) -> AdminReplica:
        await self.mount.start()
        return self

    async def stop(self) -> None:
        await self.client.aclose()
        await self.mount.stop()

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.client.request(method, f"/admin/v1{path}", **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    async def team_with_key(self, **key_body: Any) -> tuple[str, Any]:
        """A new team (unique id) and a key of it: (team id, the create answer)."""
        team_id = f"it-{uuid.uuid4().hex[:10]}"
        await self.ok("POST", "/teams", 201, json={"id": team_id, "limits": {"rpm": 60}})
        created = await self.ok("POST", "/keys", 201, json={"team_id": team_id, **key_body})
        return team_id, created


BOOTSTRAP_PLAIN: Final = "tw-" + uuid.uuid4().hex + uuid.uuid4().hex[:11]


@pytest_asyncio.fixture
async def replicas(kafka_bootstrap: str) -> AsyncIterator[tuple[AdminReplica, KafkaTenancyView]]:
    admin = await AdminReplica(kafka_bootstrap).start()
    other = KafkaTenancyView(KafkaSettings(bootstrap=kafka_bootstrap), client_id="it-other")
    await other.start()
    assert await other.wait_ready(30)
    yield admin, other
    await other.stop()
    await admin.stop()


async def _until(condition: Any, bound_s: float = 5.0) -> float:
    """Seconds until `condition()` holds (polled every 2 ms); fails after `bound_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > bound_s:
            pytest.fail(f"not within {bound_s} s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def test_a_key_created_and_revoked_on_one_replica_applies_on_another_within_1s(
    replicas: tuple[AdminReplica, KafkaTenancyView],
) -> None:
    admin, other = replicas
    _, created = await admin.team_with_key(tags=["it"])
    digest = PEPPER.digest(created["key"])
    seen_s = await _until(lambda: other.active_key(digest, now_ms()) is not None)
    revoked = await admin.ok("POST", f"/keys/{created['id']}/revoke")
    assert revoked["status"] == "revoked"
    refused_s = await _until(lambda: other.active_key(digest, now_ms()) is None)
    record = other.key_by_digest(digest)
    assert record is not None
    assert record.revoked_at_ms is not None
    print(f"\nother replica: key usable {seen_s * 1000:.0f} ms, revoked {refused_s * 1000:.0f} ms")
    assert seen_s < PROPAGATION_BOUND_S
    assert refused_s < PROPAGATION_BOUND_S


async def test_team_and_policy_changes_and_deletes_reach_the_other_replica(
    replicas: tuple[AdminReplica, KafkaTenancyView],
) -> None:
    admin, other = replicas
    team_id = f"it-{uuid.uuid4().hex[:10]}"
    tag = f"tag-{uuid.uuid4().hex[:8]}"
    await admin.ok("POST", "/teams", 201, json={"id": team_id})
    await admin.ok("PUT", f"/policies/{tag}", json={"allowed_models": ["gpt-4o-mini"]})
    await admin.ok("PATCH", f"/teams/{team_id}", json={"allowed_models": ["gpt-4o-mini"]})
    await _until(lambda: (t := other.team(team_id)) is not None and t.allowed_models != ())
    await _until(lambda: other.tag_policy(tag) is not None)
    await admin.ok("DELETE", f"/teams/{team_id}")
    await admin.ok("DELETE", f"/policies/{tag}")
    await _until(lambda: other.team(team_id) is None and other.tag_policy(tag) is None)


async def test_a_fresh_replica_loads_the_config_written_before_it_started(
    kafka_bootstrap: str, replicas: tuple[AdminReplica, KafkaTenancyView]
) -> None:
    admin, _ = replicas
    _, created = await admin.team_with_key()
    late = KafkaTenancyView(KafkaSettings(bootstrap=kafka_bootstrap), client_id="it-late")
    await late.start()
    try:
        assert await late.wait_ready(30)
        found = late.active_key(PEPPER.digest(created["key"]), now_ms())
        assert found is not None
        assert found.key_id == created["id"]
    finally:
        await late.stop()


async def _all_records(bootstrap: str, topic: topics.Topic) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of `topic`, uncommitted and aborted transactions included."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_uncommitted"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[bytes, bytes]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            out.extend(
                (r.key or b"", r.value or b"") for records in batch.values() for r in records
            )
        return out
    finally:
        await consumer.stop()


async def test_topics_never_hold_the_plain_key_and_the_audit_holds_no_digest(
    kafka_bootstrap: str, replicas: tuple[AdminReplica, KafkaTenancyView]
) -> None:
    admin, _ = replicas
    _, created = await admin.team_with_key(name="canary")
    plain = created["key"].encode()
    digest = PEPPER.digest(created["key"]).encode()
    await admin.ok("PATCH", f"/keys/{created['id']}", json={"limits": {"rpm": 5}})
    await admin.ok("POST", f"/keys/{created['id']}/revoke")
    audit = await _all_records(kafka_bootstrap, topics.AUDIT)
    for key, value in audit:
        assert plain not in key + value
        assert digest not in key + value
    events = [decode_audit(v) for k, v in audit if k == f"key:{created['id']}".encode()]
    assert [e["action"] for e in events] == ["create", "update", "revoke"]
    assert {e["actor"] for e in events} == {"admin:it"}
    assert events[0]["before"] is None
    assert events[0]["after"]["display_prefix"] == created["key"][:8]
    assert "key_digest" not in events[0]["after"]
    for topic in topics.CONFIG_TOPICS:
        for key, value in await _all_records(kafka_bootstrap, topic):
            assert plain not in key + value
    # The broker's own files too: every segment of the tenancy topics, as stored on disk.
    data = Path(os.environ["TOLLWAY_KAFKA_DIR"]) / "data"
    stored = b"".join(
        path.read_bytes()
        for topic in (*topics.CONFIG_TOPICS, topics.AUDIT)
        for path in data.glob(f"{topic.name}-*/*.log")
    )
    assert created["id"].encode() in stored  # the files read are the right ones
    assert plain not in stored


async def test_bootstrap_applies_once_and_a_restart_writes_and_audits_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    team_id = f"it-boot-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "tenancy.yaml"
    path.write_text(
        f"teams:\n  - {{id: {team_id}, limits: {{rpm: 5}}}}\n"
        f"keys:\n  - {{team_id: {team_id}, key_env: IT_BOOTSTRAP_KEY}}\n"
    )
    written = []
    for _ in range(2):
        replica = await AdminReplica(kafka_bootstrap, bootstrap_file=path).start()
        try:
            written.append(await replica.mount.service.apply_bootstrap())  # a third pass
            view = replica.mount.service.view
            assert view.active_key(PEPPER.digest(BOOTSTRAP_PLAIN), now_ms()) is not None
        finally:
            await replica.stop()
    assert written == [0, 0]  # start() applied it; nothing was left to write afterwards
    audit = await _all_records(kafka_bootstrap, topics.AUDIT)
    mine = [decode_audit(v) for k, v in audit if team_id.encode() in k or team_id.encode() in v]
    assert sorted(e["entity"] for e in mine) == ["key", "team"]  # one event each, ever
    assert {e["source"] for e in mine} == {"bootstrap"}
    assert all(BOOTSTRAP_PLAIN.encode() not in v for _, v in audit)


async def test_an_undecodable_key_record_removes_the_key_fail_closed(
    kafka_bootstrap: str, replicas: tuple[AdminReplica, KafkaTenancyView]
) -> None:
    admin, other = replicas
    _, created = await admin.team_with_key()
    digest = PEPPER.digest(created["key"])
    await _until(lambda: other.active_key(digest, now_ms()) is not None)
    await produce(kafka_bootstrap, topics.CONFIG_KEYS.name, [(created["id"].encode(), b"{oops")])
    await _until(lambda: other.key(created["id"]) is None)
    assert other.corrupt >= 1


async def test_config_topics_are_compacted_and_the_audit_is_not(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        names = [t.name for t in (*topics.CONFIG_TOPICS, topics.AUDIT)]
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    finally:
        await admin.close()
    policies: dict[str, str] = {}
    for response in described:
        for resource in response.resources:
            entries = {entry[0]: entry[1] for entry in resource[4]}
            policies[resource[3]] = entries["cleanup.policy"]
    assert policies == {
        topics.CONFIG_TEAMS.name: "compact",
        topics.CONFIG_KEYS.name: "compact",
        topics.CONFIG_POLICIES.name: "compact",
        topics.AUDIT.name: "delete",
    }


async def test_the_service_refuses_to_run_the_admin_side_without_a_pepper() -> None:
    from workers.tenancy.keys import PepperError

    with pytest.raises(PepperError, match="TOLLWAY_KEY_PEPPER"):
        TenancyService(KafkaSettings(), TenancySettings(key_pepper=None), admin=True)
