"""The bootstrap file (workers/tenancy/bootstrap.py): parsing, errors, idempotent upserts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from workers.tenancy.admin import Actor, MemoryConfigWriter, TenancyAdmin
from workers.tenancy.bootstrap import (
    BootstrapError,
    derived_key_id,
    desired_records,
    load_bootstrap,
    parse_bootstrap,
    plan,
)
from workers.tenancy.keys import Pepper
from workers.tenancy.model import KeyRecord, Limits, TagPolicy, TeamRecord
from workers.tenancy.store import ConfigChange, TenancyStore

PEPPER = Pepper("unit-test-pepper-0123456789abcdef-xyz")
PLAIN = "tw-" + "B" * 43
ENV = {"ACME_BOT_KEY": PLAIN}

FILE = """
version: 1
teams:
  - id: acme
    name: Acme Corp
    allowed_models: [gpt-4o-mini]
    limits: {rpm: 600}
    wallet: {max_output_tokens: 4096}
    metadata: {owner: platform}
keys:
  - id: key_00000000000000a1
    team_id: acme
    name: support bot
    key_env: ACME_BOT_KEY
    tags: [support-bot]
    limits: {rpm: 60}
  - team_id: acme
    key_digest: "%s"
    display_prefix: tw-Zz9
policies:
  - {tag: support-bot, allowed_models: [gpt-4o-mini]}
""" % ("c" * 64)


def test_a_full_file_becomes_records() -> None:
    records = desired_records(parse_bootstrap(FILE), PEPPER, ENV, now_ms=1_000)
    teams = [r for r in records if isinstance(r, TeamRecord)]
    keys = [r for r in records if isinstance(r, KeyRecord)]
    policies = [r for r in records if isinstance(r, TagPolicy)]
    assert teams[0].team_id == "acme"
    assert teams[0].limits == Limits(rpm=600)
    assert teams[0].wallet.max_output_tokens == 4096
    assert teams[0].created_at_ms == 1_000
    bot, other = keys
    assert bot.key_digest == PEPPER.digest(PLAIN)
    assert bot.display_prefix == PLAIN[:8]
    assert bot.tags == ("support-bot",)
    assert bot.limits == Limits(rpm=60)
    assert other.key_id == derived_key_id("c" * 64)
    assert other.display_prefix == "tw-Zz9"
    assert policies == [TagPolicy("support-bot", ("gpt-4o-mini",), 1_000)]


def test_derived_key_ids_are_stable_and_valid() -> None:
    assert derived_key_id("c" * 64) == derived_key_id("c" * 64)
    assert derived_key_id("c" * 64) != derived_key_id("d" * 64)
    assert derived_key_id("c" * 64).startswith("key_")
    assert len(derived_key_id("c" * 64)) == 20


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("teams: [{id: 'bad id'}]", "teams.0.id"),
        ("teams: [{id: acme, colour: red}]", "colour"),
        ("teams: [{id: acme}, {id: acme}]", "team id appears twice"),
        ("keys: [{team_id: acme}]", "exactly one of key_env or key_digest"),
        ("keys: [{team_id: acme, key_env: A, key_digest: '" + "c" * 64 + "'}]", "exactly one"),
        ("keys: [{team_id: acme, key_digest: 'abc'}]", "keys.0.key_digest"),
        ("keys: [{team_id: acme, key_env: 'lower-case-dash'}]", "keys.0.key_env"),
        ("keys: [{team_id: acme, key_env: A}, {team_id: acme, key_env: A}]", "key_env appears"),
        ("policies: [{tag: bot, allowed_models: []}]", "policies.0.allowed_models"),
        ("teams: [{id: acme, limits: {rpm: 0}}]", "teams.0.limits.rpm"),
        ("version: 2", "version"),
        ("teams: [unclosed", "not valid YAML (line"),
        ("- just a list", "body"),
    ],
)
def test_parse_errors_name_the_problem(text: str, says: str) -> None:
    with pytest.raises(BootstrapError, match="bootstrap") as caught:
        parse_bootstrap(text)
    assert says in str(caught.value)


def test_an_empty_file_is_empty() -> None:
    assert desired_records(parse_bootstrap(""), None, {}, 0) == []


def test_load_names_an_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(BootstrapError, match="cannot be read"):
        load_bootstrap(tmp_path / "missing.yaml")
    path = tmp_path / "tenancy.yaml"
    path.write_text(FILE)
    assert load_bootstrap(path).teams[0].id == "acme"


def test_key_env_errors_name_the_variable_never_the_value() -> None:
    file = parse_bootstrap(FILE)
    with pytest.raises(BootstrapError, match=r"ACME_BOT_KEY.*not set"):
        desired_records(file, PEPPER, {}, 0)
    with pytest.raises(BootstrapError, match="TOLLWAY_KEY_PEPPER"):
        desired_records(file, None, ENV, 0)
    weak = "tw-short"
    with pytest.raises(BootstrapError, match="not a Tollway key") as caught:
        desired_records(file, PEPPER, {"ACME_BOT_KEY": weak}, 0)
    assert weak not in str(caught.value)


def _store_after(records: list[TeamRecord | KeyRecord | TagPolicy]) -> TenancyStore:
    store = TenancyStore()
    for record in records:
        store.apply(ConfigChange.upsert(record))
    return store


def test_plan_writes_everything_once_then_nothing() -> None:
    file = parse_bootstrap(FILE)
    store = TenancyStore()
    first = plan(desired_records(file, PEPPER, ENV, 1_000), store)
    assert len(first) == 4
    for record in first:
        store.apply(ConfigChange.upsert(record))
    assert plan(desired_records(file, PEPPER, ENV, 2_000), store) == []  # a restart


def test_plan_keeps_what_the_file_does_not_say() -> None:
    file = parse_bootstrap(FILE)
    store = _store_after(plan(desired_records(file, PEPPER, ENV, 1_000), TenancyStore()))
    bot = store.key("key_00000000000000a1")
    assert bot is not None
    store.apply(ConfigChange.upsert(dataclasses.replace(bot, revoked_at_ms=1_500)))
    changed = FILE.replace("limits: {rpm: 60}", "limits: {rpm: 30}")
    out = plan(desired_records(parse_bootstrap(changed), PEPPER, ENV, 2_000), store)
    assert len(out) == 1
    updated = out[0]
    assert isinstance(updated, KeyRecord)
    assert updated.limits == Limits(rpm=30)
    assert updated.revoked_at_ms == 1_500  # the file never un-revokes
    assert updated.created_at_ms == 1_000


def test_plan_bumps_updated_at_only_for_changed_teams() -> None:
    file = parse_bootstrap(FILE)
    store = _store_after(plan(desired_records(file, PEPPER, ENV, 1_000), TenancyStore()))
    renamed = FILE.replace("name: Acme Corp", "name: Acme Inc")
    (team,) = plan(desired_records(parse_bootstrap(renamed), PEPPER, ENV, 2_000), store)
    assert isinstance(team, TeamRecord)
    assert (team.name, team.created_at_ms, team.updated_at_ms) == ("Acme Inc", 1_000, 2_000)


def test_plan_refuses_a_key_without_a_team() -> None:
    file = parse_bootstrap(FILE.replace("  - id: acme\n", "  - id: other\n"))
    with pytest.raises(BootstrapError, match="no team acme"):
        plan(desired_records(file, PEPPER, ENV, 0), TenancyStore())


def test_plan_refuses_a_key_that_another_key_id_holds() -> None:
    file = parse_bootstrap(FILE)
    store = _store_after([TeamRecord("acme", "a")])
    store.apply(
        ConfigChange.upsert(
            KeyRecord("key_0000000000000001", "acme", PEPPER.digest(PLAIN), "tw-BBBBB")
        )
    )
    with pytest.raises(BootstrapError, match="already key_0000000000000001"):
        plan(desired_records(file, PEPPER, ENV, 0), store)


async def test_applied_through_the_admin_it_audits_once_per_change() -> None:
    store = TenancyStore()
    writer = MemoryConfigWriter()
    admin = TenancyAdmin(store, writer, PEPPER, clock_ms=lambda: 5_000)
    file = parse_bootstrap(FILE)
    actor = Actor("bootstrap:tenancy.yaml", "bootstrap")

    def changes(current: TenancyStore) -> list[TeamRecord | KeyRecord | TagPolicy]:
        return plan(desired_records(file, PEPPER, ENV, 5_000), current)

    assert len(await admin.upsert(changes, actor)) == 4
    assert await admin.upsert(changes, actor) == []  # a restart: nothing written or audited
    assert len(writer.events) == 4
    assert {e.source for e in writer.events} == {"bootstrap"}
    assert all(PLAIN not in repr(e) for e in writer.events)
