"""Loaders hand a user's file to ingestion: validated, bounded and scrubbed like any request."""

from __future__ import annotations

from pathlib import Path

from services.common.bus.local_log import LocalLogBus
from services.common.settings import FleetSettings
from services.ingestion.domain import open_ingestor
from services.ingestion.settings import IngestionSettings
from services.loading import load

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
