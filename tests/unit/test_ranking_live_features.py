"""The learned ranker's item state, kept current from the bus by the ranking service."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.bus import EVENTS_TOPIC
from services.common.bus.local_log import LocalLogBus
from services.common.events import Event, event_records
from services.ranking.features import ItemFeatureState
from services.ranking.ltr import STATE_FILE
from services.ranking.server import feature_worker, live_features
from services.ranking.settings import RankingSettings
from services.retrieval.model_store import LocalModelStore

AT = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _view(event_id: str, item_id: str, at: datetime) -> Event:
    return Event.model_validate(
        {
            "event_id": event_id,
            "type": "view",
            "member_id": "m-1",
            "timestamp": at,
            "items": [{"item_id": item_id, "category": "garden"}],
        }
    )


def _fed(bus: LocalLogBus, state: ItemFeatureState, items: set[str]) -> None:
    worker = feature_worker(bus, state, f"test-{time.monotonic_ns()}")
    worker.start()
    deadline = time.monotonic() + 10
    while not items <= set(state.item_ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()


def test_without_a_trained_version_the_state_is_built_from_the_bus(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus", partitions=2, fsync=False)
    bus.publish(EVENTS_TOPIC, event_records([_view("e-1", "rake", AT), _view("e-2", "lamp", AT)]))
    state = live_features(tmp_path / "models", RankingSettings())

    _fed(bus, state, {"rake", "lamp"})

    assert {"rake", "lamp"} <= set(state.item_ids)
    assert state.popularity("rake")[0] > 0
    bus.close()


def test_events_the_trained_state_holds_are_not_counted_twice(tmp_path: Path) -> None:
    trained = ItemFeatureState()
    trained.apply([_view("e-1", "rake", AT)])
    store = LocalModelStore(tmp_path / "models" / "ltr")

    def build(folder: Path) -> dict[str, object]:
        (folder / STATE_FILE).write_bytes(trained.snapshot())
        return {}

    store.publish(build)
    bus = LocalLogBus(tmp_path / "bus", partitions=2, fsync=False)
    later = AT + timedelta(hours=1)
    bus.publish(EVENTS_TOPIC, event_records([_view("e-1", "rake", AT), _view("e-3", "hoe", later)]))
    state = live_features(tmp_path / "models", RankingSettings())

    _fed(bus, state, {"hoe"})

    # The same as each view applied once: the rake's, which the trained state held, was
    # not counted again.
    once = ItemFeatureState()
    once.apply([_view("e-1", "rake", AT), _view("e-3", "hoe", later)])
    for item in ("rake", "hoe"):
        assert state.popularity(item) == pytest.approx(once.popularity(item))
    twice = ItemFeatureState()
    twice.apply([_view("e-1", "rake", AT), _view("e-1b", "rake", AT), _view("e-3", "hoe", later)])
    assert state.popularity("rake") != pytest.approx(twice.popularity("rake"))
    bus.close()
