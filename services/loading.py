"""Load shop data onto the bus: the bundled sample, or the full public Online Retail file."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from services.common.bus import CATALOG_TOPIC, EVENTS_TOPIC, EventBus, Message
from services.common.events import CatalogItem, Event, event_records
from services.datasets.online_retail import load_jsonl_gz, to_catalog_and_events

log = logging.getLogger(__name__)
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"
BATCH = 1000


@dataclass(frozen=True)
class Loaded:
    source: str
    events: int
    items: int
    example_member: str
    skipped: bool


def source_name(source: Path | None) -> str:
    return str(source.resolve()) if source else f"bundled sample {SAMPLE_DIR}"


def read_source(source: Path | None) -> tuple[list[CatalogItem], list[Event]]:
    """Catalog and events of the source (the bundled sample when None)."""
    if source is None:
        catalog = load_jsonl_gz(SAMPLE_DIR / "catalog.jsonl.gz", CatalogItem)
        return catalog, load_jsonl_gz(SAMPLE_DIR / "events.jsonl.gz", Event)
    if not source.is_file():
        raise FileNotFoundError(f"no Online Retail CSV at {source}")
    return to_catalog_and_events(source)


def load(bus: EventBus, data_dir: Path, source: Path | None) -> Loaded:
    """Publish the source's catalog then its events, once per data dir and source.

    Reloading would be harmless (event ids are deterministic and consumers idempotent) but
    would grow the log for nothing, so a marker in the data dir records what was loaded.
    """
    marker = data_dir / "loaded.json"
    name = source_name(source)
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("source") == name and done.get("bus") == bus.location():
            return Loaded(name, done["events"], done["items"], done["example_member"], True)
    catalog, events = read_source(source)
    _publish(bus, CATALOG_TOPIC, [Message(i.item_id, i.to_bytes()) for i in catalog])
    _publish(bus, EVENTS_TOPIC, event_records(events))
    example = Counter(e.member_id for e in events).most_common(1)[0][0] if events else ""
    loaded = Loaded(name, len(events), len(catalog), example, False)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps(
            {
                "source": name,
                "bus": bus.location(),
                "events": len(events),
                "items": len(catalog),
                "example_member": example,
            }
        )
    )
    return loaded


def _publish(bus: EventBus, topic: str, messages: list[Message]) -> None:
    for start in range(0, len(messages), BATCH):
        bus.publish(topic, messages[start : start + BATCH])


def example_member(data_dir: Path) -> str | None:
    marker = data_dir / "loaded.json"
    if not marker.is_file():
        return None
    member: str = json.loads(marker.read_text()).get("example_member", "")
    return member or None
