"""On a running fleet: a merchandiser pins an item on the home page and a member sees it
there within a second; the shop's tags on an item come back from the catalog
(docs/merchandising.md)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from services.common.events import CatalogItem
from services.datasets.online_retail import load_jsonl_gz
from services.loading import SAMPLE_DIR
from tests.integration.conftest import RunningFleet

pytestmark = pytest.mark.integration
POSITION = 2


@pytest.fixture
def admin(fleet: RunningFleet) -> Iterator[httpx.Client]:
    """A key of its own (its own rate-limit bucket); every rule it made is deleted after."""
    with fleet.client(key=fleet.new_key("admin", name="merchandising tests")) as http:
        try:
            yield http
        finally:
            for rule in http.get("/v1/rules").json()["rules"]:
                if rule["name"].startswith("test-"):
                    http.delete(f"/v1/rules/{rule['rule_id']}")


def _within(seconds: float, check: Callable[[], Any]) -> Any:
    """`check()` once it is truthy, polling; its last value after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _home(http: httpx.Client, member_id: str) -> list[dict[str, Any]]:
    reply = http.get(
        f"/v1/members/{member_id}/recommendations", params={"placement": "home", "limit": 5}
    )
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def test_a_pinned_item_shows_at_its_position_within_a_second_and_goes_when_deleted(
    fleet: RunningFleet, admin: httpx.Client
) -> None:
    member_id = json.loads((fleet.data_dir / "loaded.json").read_text())["example_member"]
    before = [item["item_id"] for item in _home(admin, member_id)]
    # An item of the catalog the member was not going to see.
    hero = next(
        item.item_id
        for item in load_jsonl_gz(SAMPLE_DIR / "catalog.jsonl.gz", CatalogItem)
        if item.in_stock and item.item_id not in before
    )
    name = f"test-home-hero-{uuid.uuid4().hex[:6]}"

    created = admin.post(
        "/v1/rules",
        json={
            "placement": "home",
            "name": name,
            "action": "pin",
            "item_id": hero,
            "position": POSITION,
        },
    )
    assert created.status_code == 201, created.text
    started = time.monotonic()

    def pinned() -> dict[str, Any] | None:
        items = _home(admin, member_id)
        at = items[POSITION - 1] if len(items) >= POSITION else {}
        return at if at.get("item_id") == hero else None

    shown = _within(1.0, pinned)
    assert shown, f"{hero} not at position {POSITION} within a second"
    assert time.monotonic() - started < 1.5
    assert f"pinned by rule {name}" in shown["reasons"]

    deleted = admin.delete(f"/v1/rules/{created.json()['rule_id']}")
    assert deleted.status_code == 204

    def gone() -> bool:
        return hero not in [item["item_id"] for item in _home(admin, member_id)]

    assert _within(1.0, gone), f"{hero} still shown a second after its rule was deleted"


def test_tags_sent_with_a_catalog_item_come_back_on_the_item(
    fleet: RunningFleet, admin: httpx.Client
) -> None:
    item_id = f"merch-{uuid.uuid4().hex[:8]}"
    sent = {
        "item_id": item_id,
        "name": "Seed tray",
        "category": "garden",
        "price": 4.5,
        # Out of stock: no other test's recommendations can show it.
        "in_stock": False,
        "tags": ["eco", "spring"],
        "brand": "Acme",
        "attributes": {"colour": "green", "cells": 24},
    }

    accepted = admin.put("/v1/items", json=sent)
    assert accepted.status_code == 200, accepted.text

    def found() -> dict[str, Any] | None:
        reply = admin.get(f"/v1/items/{item_id}")
        return reply.json() if reply.status_code == 200 else None

    item = _within(15.0, found)
    assert item, f"{item_id} not in the catalog 15 s after it was sent"
    assert item["tags"] == ["eco", "spring"]
    assert (item["brand"], item["category"], item["price"], item["in_stock"]) == (
        "Acme",
        "garden",
        4.5,
        False,
    )
    assert item["attributes"] == {"colour": "green", "cells": "24"}
    assert admin.get("/v1/items/never-sent").status_code == 404
