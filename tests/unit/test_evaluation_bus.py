"""`recofleet evaluate --data bus`: what the bus holds, with erasures and links honoured."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.common.bus import CATALOG_TOPIC, EVENTS_TOPIC, MEMBERS_TOPIC, Message
from services.common.bus.local_log import LocalLogBus
from services.common.events import CatalogItem, Event, event_records
from services.common.members import Erase, Link, command_message
from services.evaluation import cli
from services.evaluation.bus_data import read_bus

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _event(n: int, member: str, kind: str = "purchase", **fields: object) -> Event:
    return Event(
        event_id=f"e-{n}",
        type=kind,
        member_id=member,
        timestamp=T0 + timedelta(hours=n),
        **fields,
    )


def _shop_bus(root: Path) -> LocalLogBus:
    bus = LocalLogBus(root, partitions=2)
    bus.ensure_topics([EVENTS_TOPIC, CATALOG_TOPIC, MEMBERS_TOPIC])
    events = [
        _event(
            1, "ann", order_id="o-1", items=[{"item_id": "mug", "quantity": 2}, {"item_id": "pan"}]
        ),
        _event(2, "ann", "view", item_id="lamp"),
        _event(3, "visitor-9", "view", item_id="rug"),
        _event(4, "bob", item_id="mug"),
        _event(5, "cy", "rate", item_id="pan", rating=4.0),
    ]
    bus.publish(EVENTS_TOPIC, event_records(events))
    bus.publish(
        CATALOG_TOPIC, [Message("mug", CatalogItem(item_id="mug", category="kitchen").to_bytes())]
    )
    bus.publish(
        MEMBERS_TOPIC,
        [
            command_message(Link(anonymous_id="visitor-9", member_id="ann", at=T0)),
            command_message(Erase(member_id="bob", erasure_id="x-1", at=T0 + timedelta(hours=6))),
        ],
    )
    return bus


def test_the_bus_reads_as_every_line_with_links_and_erasures_honoured(tmp_path: Path) -> None:
    bus = _shop_bus(tmp_path / "bus")

    data = read_bus(bus, "test bus")

    seen = sorted((i.member_id, i.item_id, i.type, i.value) for i in data.interactions)
    assert seen == [
        ("ann", "lamp", "view", 1.0),
        ("ann", "mug", "purchase", 2.0),
        ("ann", "pan", "purchase", 1.0),
        ("ann", "rug", "view", 1.0),  # the visitor's view, after login
        ("cy", "pan", "rate", 4.0),
    ]
    assert {
        i.basket for i in data.interactions if i.item_id in ("mug", "pan") and i.member_id == "ann"
    } == {"o-1"}
    assert data.categories == {"mug": "kitchen"}
    assert data.dropped == {"events of erased members": 1}
    # A reader of its own: no service's position moved, no group left behind.
    assert not any(
        p.name.startswith("recofleet-evaluate") for p in (tmp_path / "bus" / "groups").iterdir()
    )
    bus.close()


def test_cli_evaluates_what_the_bus_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOFLEET_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("RECOFLEET_BUS", "local")
    bus = LocalLogBus(tmp_path / "var" / "bus", partitions=2)
    bus.ensure_topics([EVENTS_TOPIC, CATALOG_TOPIC, MEMBERS_TOPIC])
    events = [
        _event(n, f"m{n % 7}", item_id=f"i{(n * 3) % 11}", order_id=f"o-{n}") for n in range(120)
    ]
    bus.publish(EVENTS_TOPIC, event_records(events))
    bus.close()
    out = tmp_path / "report"
    argv = ["evaluate", "--data", "bus", "--split", "last-basket", "--k", "5"]
    assert cli.main([*argv, "--models", "popularity", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["dataset"]["interactions"] == 120
    assert report["dataset"]["name"] == "event-bus"
