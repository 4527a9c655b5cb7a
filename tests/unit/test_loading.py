"""Loaders hand a user's file to ingestion: validated, bounded and scrubbed like any request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.common.bus import EVENTS_TOPIC
from services.common.bus.local_log import LocalLogBus
from services.common.events import AnyEvent, read_events
from services.common.settings import FleetSettings
from services.ingestion.domain import open_ingestor
from services.ingestion.settings import IngestionSettings
from services.loading import Loaded, load, read_source, redate

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,UK",
    "536366,71053,WHITE METAL LANTERN,6,2010-12-01 08:28:00,3.39,jane.doe@example.com,UK",
    "536367,22633,HAND WARMER UNION JACK,1,2010-12-01 08:34:00,2000000000,13047,UK",
]


def test_a_users_file_is_scrubbed_and_checked_on_its_way_to_the_bus(tmp_path: Path) -> None:
    source = tmp_path / "retail.csv"
    source.write_text(HEADER + "\n".join(ROWS) + "\n")
    fleet = FleetSettings(data_dir=tmp_path / "var")
    bus = LocalLogBus(fleet.data_dir / "bus", partitions=2, fsync=False)
    try:
        ingestor = open_ingestor(fleet, bus, IngestionSettings(max_batch_events=2))
        loaded = load(ingestor, bus.location(), fleet.data_dir, source)
    finally:
        bus.close()

    # The invoice with an absurd price is refused, and so is its item (priced at it).
    assert (loaded.events, loaded.items, loaded.rejected) == (2, 2, 2)
    assert all("price" in reason and "1000000000" in reason for reason in loaded.reasons)
    assert loaded.example_member == "17850"
    stored = b"".join(p.read_bytes() for p in fleet.data_dir.rglob("*") if p.is_file())
    assert b"jane.doe@example.com" not in stored
    assert b"pii:" in stored


def _load(tmp_path: Path, source: Path | None, **options: Any) -> tuple[Loaded, list[AnyEvent]]:
    fleet = FleetSettings(data_dir=tmp_path / "var")
    bus = LocalLogBus(fleet.data_dir / "bus", partitions=2, fsync=False)
    try:
        ingestor = open_ingestor(fleet, bus, IngestionSettings())
        loaded = load(ingestor, bus.location(), fleet.data_dir, source, **options)
        with bus.consumer("test", [EVENTS_TOPIC]) as consumer:
            events = [
                e for r in consumer.poll(100_000, timeout_s=1.0) for e in read_events(r.value)
            ]
    finally:
        bus.close()
    return loaded, events


def test_the_sample_is_redated_so_that_its_newest_event_is_from_the_last_day(tmp_path: Path):
    now = datetime.now(UTC)
    _, originals = read_source(None)

    loaded, events = _load(tmp_path, None, redate_to=now)

    assert loaded.events == len(originals) == len(events)
    newest = max(e.timestamp for e in events)
    assert now - timedelta(days=1) < newest <= now
    shift = timedelta(days=loaded.shifted_days)
    by_id = {e.event_id: e.timestamp for e in originals}
    # Every event moved by the same whole days: order, spacing and times of day kept.
    assert all(e.timestamp - by_id[e.event_id] == shift for e in events)
    assert loaded.shifted_days > 5000


def test_without_redating_the_dates_stay_as_they_were(tmp_path: Path):
    _, originals = read_source(None)

    loaded, events = _load(tmp_path, None)

    assert loaded.shifted_days == 0
    assert {e.event_id: e.timestamp for e in events} == {e.event_id: e.timestamp for e in originals}


def test_redating_moves_whole_days_and_leaves_undated_entries_alone():
    now = datetime(2026, 5, 1, 9, 30, tzinfo=UTC)
    entries = [
        {"event_id": "a", "timestamp": "2011-12-09T12:25:00Z"},
        {"event_id": "b", "timestamp": "2011-12-01T08:00:00+01:00"},
        {"event_id": "c"},
        {"event_id": "d", "timestamp": "yesterday"},
    ]

    moved, days = redate(entries, now)

    assert (
        days
        == (
            datetime(2026, 4, 30, 12, 25, tzinfo=UTC) - datetime(2011, 12, 9, 12, 25, tzinfo=UTC)
        ).days
    )
    assert [e.get("timestamp") for e in moved] == [
        "2026-04-30T12:25:00Z",
        "2026-04-22T07:00:00Z",
        None,
        "yesterday",
    ]
    assert entries[0]["timestamp"] == "2011-12-09T12:25:00Z"  # the input is left as it was
    assert redate([{"event_id": "e"}], now) == ([{"event_id": "e"}], 0)
