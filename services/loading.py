"""Load shop data onto the bus: the bundled sample, or the full public Online Retail file.

Loaders never publish themselves: they hand native batches to the same `Ingestor` the
ingestion service runs, so a user's file is validated, bounded and scrubbed of personal
data exactly like events sent to the gateway.

A historical data set is re-dated on its way (on by default: `RECOFLEET_REDATE`,
`recofleet load-sample --no-redate`): every event moves by the same whole number of days,
so that the newest lands within the last day before the fleet's clock. Recency, decay and
lifecycle then read like a live shop's instead of calling every member churned; the order
and spacing of events, times of day and so any split of the history in time stay as they
were.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.common.events import CatalogItem, Event
from services.datasets.online_retail import to_native
from services.ingestion.domain import Ingestor, Outcome, Rejected

log = logging.getLogger(__name__)
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"


@dataclass(frozen=True)
class Loaded:
    source: str
    events: int
    items: int
    example_member: str
    skipped: bool
    rejected: int = 0
    reasons: tuple[str, ...] = ()  # the first few rejections, to show the user
    shifted_days: int = 0  # how far the events were re-dated (0: not re-dated)


def source_name(source: Path | None) -> str:
    return str(source.resolve()) if source else f"bundled sample {SAMPLE_DIR}"


def read_source(source: Path | None) -> tuple[list[CatalogItem], list[Event]]:
    """Catalog and events of the source (the bundled sample when None), validated."""
    catalog, events = read_entries(source)
    return (
        [CatalogItem.model_validate(item) for item in catalog],
        [Event.model_validate(event) for event in events],
    )


def read_entries(source: Path | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Catalog and events of the source as native JSON objects, for ingestion to validate."""
    if source is None:
        return _jsonl_gz(SAMPLE_DIR / "catalog.jsonl.gz"), _jsonl_gz(SAMPLE_DIR / "events.jsonl.gz")
    if not source.is_file():
        raise FileNotFoundError(f"no Online Retail CSV at {source}")
    return to_native(source)


def _jsonl_gz(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rb") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def redate(entries: Sequence[dict[str, Any]], now: datetime) -> tuple[list[dict[str, Any]], int]:
    """The events moved by whole days so that the newest is within the day before `now`,
    and by how many days. Entries without a timestamp readable as ISO 8601 stay as they are
    (ingestion stamps or refuses them)."""
    stamps = [_timestamp(entry) for entry in entries]
    known = [stamp for stamp in stamps if stamp is not None]
    if not known:
        return list(entries), 0
    days = (now - max(known)) // timedelta(days=1)
    if days == 0:
        return list(entries), 0
    shift = timedelta(days=days)
    moved = [
        entry if stamp is None else {**entry, "timestamp": _iso(stamp + shift)}
        for entry, stamp in zip(entries, stamps, strict=True)
    ]
    return moved, days


def _timestamp(entry: dict[str, Any]) -> datetime | None:
    raw = entry.get("timestamp") if isinstance(entry, dict) else None
    if not isinstance(raw, str):
        return None
    try:
        stamp = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return stamp.astimezone(UTC) if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def _iso(stamp: datetime) -> str:
    return stamp.isoformat().replace("+00:00", "Z")


def load(
    ingestor: Ingestor,
    bus_location: str,
    data_dir: Path,
    source: Path | None,
    *,
    redate_to: datetime | None = None,
) -> Loaded:
    """Publish the source's catalog then its events through `ingestor`, once per data dir,
    source and bus (`bus_location` names the bus); re-dated to `redate_to` when given.

    Reloading would be harmless (event ids are deterministic and consumers idempotent) but
    would grow the log for nothing, so a marker in the data dir records what was loaded.
    """
    marker = data_dir / "loaded.json"
    name = source_name(source)
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("source") == name and done.get("bus") == bus_location:
            return Loaded(
                name,
                done["events"],
                done["items"],
                done["example_member"],
                True,
                shifted_days=done.get("shifted_days", 0),
            )
    catalog, events = read_entries(source)
    shifted_days = 0
    if redate_to is not None:
        events, shifted_days = redate(events, redate_to)
    items_out = _submit(ingestor.upsert_items, "items", catalog, ingestor.max_batch)
    events_out = _submit(ingestor.publish_events, "events", events, ingestor.max_batch)
    accepted = set(events_out.accepted)
    # The example is printed and kept in the marker: never one that is personal data.
    members = Counter(
        str(e.get("member_id"))
        for e in events
        if e.get("event_id") in accepted and not ingestor.personal(str(e.get("member_id")))
    )
    example = members.most_common(1)[0][0] if members else ""
    rejected = items_out.rejected + events_out.rejected
    loaded = Loaded(
        name,
        len(events_out.accepted),
        len(items_out.accepted),
        example,
        False,
        rejected=len(rejected),
        reasons=tuple(f"{r.id or f'#{r.index}'}: {r.reason}" for r in rejected[:5]),
        shifted_days=shifted_days,
    )
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps(
            {
                "source": name,
                "bus": bus_location,
                "events": loaded.events,
                "items": loaded.items,
                "example_member": example,
                "shifted_days": shifted_days,
            }
        )
    )
    return loaded


def _submit(
    publish: Callable[[bytes], Outcome],
    key: str,
    entries: Sequence[dict[str, Any]],
    batch: int,
) -> Outcome:
    """Send `entries` in native batches of `batch`; the outcomes summed up."""
    total = Outcome()
    for start in range(0, len(entries), batch):
        chunk = entries[start : start + batch]
        outcome = publish(json.dumps({key: chunk}, ensure_ascii=False).encode())
        total.accepted.extend(outcome.accepted)
        total.rejected.extend(Rejected(start + r.index, r.id, r.reason) for r in outcome.rejected)
    return total


def example_member(data_dir: Path) -> str | None:
    marker = data_dir / "loaded.json"
    if not marker.is_file():
        return None
    member: str = json.loads(marker.read_text()).get("example_member", "")
    return member or None
