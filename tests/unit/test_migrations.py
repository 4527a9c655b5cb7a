"""Schema migrations (services.common.migrations) and the pruning of processed event ids,
on SQLite and PostgreSQL.

The first test is the one that fails when a store gains a table, column or index without a
revision: each service's revisions, run on an empty database, must make exactly the tables
its store declares.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, inspect, text

from services.analytics.settings import AnalyticsSettings
from services.analytics.store import SqlAnalyticsStore
from services.analytics.store import metadata as analytics_tables
from services.campaigns.campaign_store import metadata as campaigns_tables
from services.campaigns.store import SqlCatalogStore
from services.common import migrations
from services.common.events import CatalogItem, Event
from services.common.migrations import (
    BASELINE,
    SERVICES,
    OutdatedSchema,
    alembic_config,
    current,
    head,
    revisions,
    upgrade,
    version_table,
)
from services.common.pruning import keep_processed_pruned
from services.gateway.access_keys import SqlAccessKeyStore, create_key, digest, new_key
from services.gateway.access_keys import metadata as gateway_tables
from services.profiles.settings import ProfilesSettings
from services.profiles.store import SqlProfileStore
from services.profiles.store import metadata as profiles_tables
from services.ranking.store import SqlRankingStore
from services.ranking.store import metadata as ranking_tables
from services.retrieval.store import SqlInteractionStore
from services.retrieval.store import metadata as retrieval_tables
from tests import interactions as stored
from tests.unit import previous_release
from tests.unit.conftest import ENGINES

STORE_TABLES: dict[str, MetaData] = {
    "analytics": analytics_tables,
    "campaigns": campaigns_tables,
    "gateway": gateway_tables,
    "profiles": profiles_tables,
    "ranking": ranking_tables,
    "retrieval": retrieval_tables,
}
WEIGHTS = {"view": 1.0, "add_to_cart": 3.0, "purchase": 5.0}
# FleetSettings' default processed_retention_hours.
RETENTION = timedelta(hours=336)
NOW = datetime.now(UTC).replace(microsecond=0)


def _differences(conn: Connection, service: str, tables: MetaData) -> list[Any]:
    """What autogenerate would change to make the database match `tables` (its own tables
    only: a shared database also holds other services')."""

    def own(name: str | None, type_: str, _parent: Any) -> bool:
        return type_ != "table" or name in tables.tables

    context = MigrationContext.configure(
        conn,
        opts={"version_table": version_table(service), "compare_type": True, "include_name": own},
    )
    return list(compare_metadata(context, tables))


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


@pytest.mark.parametrize("service", SERVICES)
def test_the_revisions_make_exactly_the_store_tables(engine: Engine, service: str) -> None:
    upgrade(engine, service)

    with engine.connect() as conn:
        assert _differences(conn, service, STORE_TABLES[service]) == []
        assert current(conn, service) == head(service)
    assert _tables(engine) == {*STORE_TABLES[service].tables, version_table(service)}


@pytest.mark.parametrize("service", SERVICES)
def test_the_baseline_is_the_schema_of_the_previous_release(engine: Engine, service: str) -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(service, conn), BASELINE)

    with engine.connect() as conn:
        assert _differences(conn, service, previous_release.SCHEMAS[service]) == []


@pytest.mark.parametrize("service", SERVICES)
def test_the_revisions_are_one_numbered_line_from_the_baseline(service: str) -> None:
    line = revisions(service)

    assert line[0] == BASELINE
    assert [int(revision.split("_", 1)[0]) for revision in line] == list(range(1, len(line) + 1))
    assert all(re.fullmatch(r"\d{4}_[a-z0-9_]+", revision) for revision in line)
    assert line[-1] == head(service)
    # The same line as Alembic's own walk finds.
    script = ScriptDirectory.from_config(alembic_config(service))
    assert script.get_heads() == [head(service)]
    assert script.get_revision(head(service)).down_revision == (line[-2] if len(line) > 1 else None)


def test_an_up_to_date_database_is_left_alone(engine: Engine) -> None:
    upgrade(engine, "gateway")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE left_alone (x INTEGER)"))

    upgrade(engine, "gateway")

    with engine.connect() as conn:
        versions = conn.execute(text(f"SELECT version_num FROM {version_table('gateway')}"))
        assert versions.scalars().all() == [head("gateway")]
    assert "left_alone" in _tables(engine)


def test_a_database_a_newer_release_migrated_is_left_as_it_is(engine: Engine) -> None:
    upgrade(engine, "gateway")
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {version_table('gateway')} SET version_num = '0099_later'"))

    upgrade(engine, "gateway")

    with engine.connect() as conn:
        assert current(conn, "gateway") == "0099_later"


def test_each_service_keeps_its_own_version_table(engine: Engine) -> None:
    # A service pointed at another's database by mistake does not think itself migrated
    # (services still need one database or schema each: several have a catalog_items).
    upgrade(engine, "profiles")
    upgrade(engine, "gateway")

    with engine.connect() as conn:
        for service in ("profiles", "gateway"):
            assert current(conn, service) == head(service)
            assert _differences(conn, service, STORE_TABLES[service]) == []


def test_a_database_older_than_the_baseline_is_refused_with_what_to_do(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE access_keys (key_id VARCHAR(32) PRIMARY KEY)"))

    with pytest.raises(OutdatedSchema, match="access_keys lacks name, scopes, digest"):
        upgrade(engine, "gateway")
    assert version_table("gateway") not in _tables(engine)


def test_replicas_starting_together_on_postgresql_migrate_once(tmp_path: Path) -> None:
    with contextmanager(ENGINES["postgresql"])(tmp_path) as engine:
        start = threading.Barrier(4)
        failures: list[BaseException] = []

        def replica() -> None:
            start.wait()
            try:
                upgrade(engine, "profiles")
            except BaseException as exc:
                failures.append(exc)

        replicas = [threading.Thread(target=replica) for _ in range(4)]
        for thread in replicas:
            thread.start()
        for thread in replicas:
            thread.join(timeout=60)

        assert failures == []
        with engine.connect() as conn:
            versions = conn.execute(text(f"SELECT version_num FROM {version_table('profiles')}"))
            assert versions.scalars().all() == [head("profiles")]


@pytest.fixture(params=sorted(ENGINES))
def data_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Engine]]:
    """A database per service, as the fleet has them: SQLite files, or PostgreSQL schemas."""
    with ExitStack() as stack:
        engines = {}
        for service in SERVICES:
            (tmp_path / service).mkdir()
            opened = contextmanager(ENGINES[request.param])(tmp_path / service)
            engines[service] = stack.enter_context(opened)
        yield engines


def _view(event_id: str, item_id: str, category: str, at: datetime = NOW) -> Event:
    return Event.model_validate(
        {
            "event_id": event_id,
            "type": "view",
            "member_id": "m-1",
            "timestamp": at,
            "items": [{"item_id": item_id, "category": category}],
        }
    )


def _previous_release_rows(engines: dict[str, Engine], key: str) -> None:
    """What the previous release had written for a member who viewed a lamp and bought it
    and a rake (events e-1 and e-2), and for an access key."""
    bought = NOW - timedelta(days=3)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        "profiles": {
            "members": [
                {
                    "member_id": "m-1",
                    "first_seen": bought - timedelta(hours=1),
                    "last_seen": bought,
                    "last_order_at": bought,
                    "orders": 1,
                    "spend": 27.5,
                    "events": 2,
                    "recent": f'[["rake","purchase","{bought.isoformat()}"],'
                    f'["lamp","view","{(bought - timedelta(hours=1)).isoformat()}"]]',
                    "first_order_at": bought,
                    "discounted_orders": 0,
                    "channels": '{"web":2}',
                }
            ],
            "member_categories": [
                {
                    "member_id": "m-1",
                    "category": "lighting",
                    "weight": 1.0,
                    "events": 1,
                    "affinity": 1.0,
                    "affinity_at_s": (bought - timedelta(hours=1)).timestamp(),
                    "last_purchase_at_s": None,
                    "paid_units": 0,
                    "paid_amount": 0.0,
                },
                {
                    "member_id": "m-1",
                    "category": "garden",
                    "weight": 5.0,
                    "events": 1,
                    "affinity": 5.0,
                    "affinity_at_s": bought.timestamp(),
                    "last_purchase_at_s": bought.timestamp(),
                    "paid_units": 1,
                    "paid_amount": 27.5,
                },
            ],
            "member_tags": [{"member_id": "m-1", "tag": "vip", "set_at": bought}],
            "member_purchases": [{"member_id": "m-1", "item_id": "rake"}],
            "member_orders": [{"member_id": "m-1", "order_id": "o-1"}],
            "processed_events": [{"event_id": "e-1"}, {"event_id": "e-2"}],
            "catalog_items": [
                {"item_id": "lamp", "name": "Lamp", "category": "lighting", "price": 20.0}
            ],
        },
        "retrieval": {
            "interactions": [
                {
                    "event_id": "e-1",
                    "line": 0,
                    "member_id": "m-1",
                    "item_id": "lamp",
                    "event_type": "view",
                    "weight": 1.0,
                    "at": bought - timedelta(hours=1),
                },
                {
                    "event_id": "e-2",
                    "line": 0,
                    "member_id": "m-1",
                    "item_id": "rake",
                    "event_type": "purchase",
                    "weight": 5.0,
                    "at": bought,
                },
            ],
            "catalog_items": [
                {"item_id": "lamp", "name": "Lamp", "category": "lighting", "price": 20.0}
            ],
        },
        "campaigns": {
            "catalog_items": [
                {"item_id": "lamp", "category": "lighting", "price": 20.0, "in_stock": True},
                {"item_id": "rake", "category": "garden", "price": 27.5, "in_stock": False},
            ]
        },
        "gateway": {
            "access_keys": [
                {
                    "key_id": key.split("_")[1],
                    "name": "shop frontend",
                    "scopes": "events:write recommendations:read",
                    "digest": digest(key),
                    "created_at": bought,
                    "revoked_at": None,
                }
            ]
        },
    }
    for service, tables in rows.items():
        schema = previous_release.SCHEMAS[service]
        schema.create_all(engines[service])
        with engines[service].begin() as conn:
            for table, values in tables.items():
                conn.execute(schema.tables[table].insert(), values)


def test_a_data_dir_of_the_previous_release_upgrades_in_place(data_dir: dict[str, Engine]) -> None:
    _, key = new_key()
    _previous_release_rows(data_dir, key)

    profiles = SqlProfileStore(data_dir["profiles"], ProfilesSettings())
    member = profiles.get("m-1")
    assert member is not None
    assert (member.orders, member.spend, member.events) == (1, 27.5, 2)
    assert sorted(member.categories) == ["garden", "lighting"]
    assert member.categories["garden"].paid_amount == 27.5
    assert [item.item_id for item in member.recent] == ["rake", "lamp"]
    assert member.purchased == ["rake"]
    assert [tag.tag for tag in member.manual_tags] == ["vip"]
    # An event the previous release applied, delivered again, is still recognised...
    assert profiles.apply_events([_view("e-1", "lamp", "lighting")]) == 0
    # ... for a whole retention window after the upgrade, and new events apply.
    assert profiles.prune_processed(datetime.now(UTC) - RETENTION) == 0
    assert profiles.apply_events([_view("e-3", "lamp", "lighting")]) == 1
    member = profiles.get("m-1")
    assert member is not None
    assert (member.events, member.categories["lighting"].events) == (3, 2)
    profiles.close()

    interactions = SqlInteractionStore(data_dir["retrieval"], WEIGHTS)
    assert stored.history(interactions, "m-1", 10) == {"lamp": 1.0, "rake": 5.0}
    assert interactions.categories(["lamp"]) == {"lamp": "lighting"}
    assert interactions.apply_events([_view("e-1", "lamp", "lighting")]) == 0
    assert interactions.apply_events([_view("e-3", "lamp", "lighting")]) == 1
    assert stored.history(interactions, "m-1", 10) == {"lamp": 2.0, "rake": 5.0}
    interactions.close()

    catalog = SqlCatalogStore(data_dir["campaigns"])
    assert catalog.out_of_stock(["lamp", "rake"]) == {"rake"}
    catalog.save([CatalogItem(item_id="rake", category="garden", price=27.5, in_stock=True)])
    assert catalog.out_of_stock(["lamp", "rake"]) == set()
    catalog.close()

    keys = SqlAccessKeyStore(data_dir["gateway"])
    record = keys.get(key.split("_")[1])
    assert record is not None
    assert record.matches(key)
    assert record.allows("events:write")
    assert not record.allows("admin")
    assert create_key(keys, ["admin"], "ops")[0].allows("admin")
    assert len(keys.all()) == 2
    keys.close()

    # Ranking kept nothing in that release: its tables start empty.
    ranking = SqlRankingStore(data_dir["ranking"])
    assert ranking.active() is None and ranking.experiments() == []
    ranking.close()
    analytics = SqlAnalyticsStore(data_dir["analytics"], AnalyticsSettings())
    assert analytics.impression("r-1") is None
    analytics.close()

    for service, engine in data_dir.items():
        with engine.connect() as conn:
            assert current(conn, service) == head(service)


def test_old_processed_ids_are_pruned_and_recent_ones_still_recognised(engine: Engine) -> None:
    store = SqlProfileStore(engine, ProfilesSettings())
    assert store.apply_events([_view(f"old-{n}", "lamp", "lighting") for n in range(3)]) == 3
    time.sleep(0.01)
    window_start = datetime.now(UTC)
    time.sleep(0.01)
    assert store.apply_events([_view("recent", "rake", "garden")]) == 1

    assert store.prune_processed(window_start, batch=2) == 3
    assert store.prune_processed(window_start) == 0

    # A recent event delivered again is not applied twice.
    assert store.apply_events([_view("recent", "rake", "garden")]) == 0
    member = store.get("m-1")
    assert member is not None
    assert member.categories["garden"].events == 1
    # An id past the window is forgotten: the bus no longer has its event to redeliver.
    assert store.apply_events([_view("old-0", "lamp", "lighting")]) == 1


def test_the_schedule_prunes_past_the_retention_window() -> None:
    cutoffs: list[datetime] = []

    class Store:
        def prune_processed(self, before: datetime) -> int:
            cutoffs.append(before)
            return 1

    async def two_rounds() -> None:
        pruning = asyncio.create_task(
            keep_processed_pruned(Store(), RETENTION, every_s=0.01)  # type: ignore[arg-type]
        )
        while len(cutoffs) < 2:
            await asyncio.sleep(0.005)
        pruning.cancel()

    asyncio.run(two_rounds())

    assert len(cutoffs) >= 2
    assert abs(cutoffs[0] - (datetime.now(UTC) - RETENTION)) < timedelta(seconds=5)


def test_a_new_revision_is_written_after_the_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(
        Path(migrations.__file__).parent.parent / "campaigns" / "migrations",
        tmp_path / "campaigns" / "migrations",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    monkeypatch.setattr(migrations, "_SERVICES_DIR", tmp_path)
    revisions.cache_clear()
    try:
        before = head("campaigns")
        expected = f"{int(before.split('_', 1)[0]) + 1:04d}_stock_counts"
        written = migrations.new_revision("campaigns", "Stock counts!")
        assert written.name == f"{expected}.py"
        assert f'down_revision = "{before}"' in written.read_text().replace("'", '"')
        assert head("campaigns") == expected
    finally:
        revisions.cache_clear()
