"""The fleet end to end: events in through the gateway, personalized recommendations out."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest

from services.common.events import CatalogItem, Event
from services.datasets.online_retail import load_jsonl_gz
from services.loading import SAMPLE_DIR
from tests.integration.conftest import RunningFleet, welcomed

pytestmark = pytest.mark.integration


def poll(check, timeout_s: float = 30.0, every_s: float = 0.3):
    """Call `check` until it returns something truthy; return that (or fail after timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(every_s)


def bestsellers_by_category() -> dict[str, list[str]]:
    """The sample's items per category, most bought first (all of them known to the model)."""
    categories = {
        i.item_id: i.category for i in load_jsonl_gz(SAMPLE_DIR / "catalog.jsonl.gz", CatalogItem)
    }
    bought = Counter(
        line.item_id
        for e in load_jsonl_gz(SAMPLE_DIR / "events.jsonl.gz", Event)
        for line in e.lines()
    )
    ranked: dict[str, list[str]] = {}
    for item_id, _ in bought.most_common():
        ranked.setdefault(categories.get(item_id) or "", []).append(item_id)
    return ranked


def share(items: list[dict], category: str) -> float:
    return sum(1 for i in items if i.get("category") == category) / max(len(items), 1)


def test_a_sample_member_gets_ten_scored_recommendations(fleet: RunningFleet):
    member_id = json.loads((fleet.data_dir / "loaded.json").read_text())["example_member"]
    with fleet.client() as http:
        reply = http.get(f"/v1/members/{member_id}/recommendations", params={"limit": 10})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["items"]) == 10
    assert body["recommendation_id"].startswith("r-")
    assert body["model"].startswith("blend+als@")
    assert body["degraded"] is False
    assert all(isinstance(i["score"], float) and i["reasons"] for i in body["items"])
    assert len({i["item_id"] for i in body["items"]}) == 10


def test_an_unknown_member_gets_popular_items(fleet: RunningFleet):
    with fleet.client() as http:
        body = http.get(f"/v1/members/nobody-{uuid.uuid4()}/recommendations").json()
    assert len(body["items"]) == 10
    assert body["recommendation_id"]
    assert all("popular in the shop" in i["reasons"] for i in body["items"])


def test_new_members_events_shape_profile_and_recommendations(fleet: RunningFleet):
    ranked = bestsellers_by_category()
    category = next(c for c in ("christmas", "kitchen", "bags") if len(ranked.get(c, [])) >= 20)
    viewed, bought = ranked[category][5:9], ranked[category][9]
    member_id = f"it-{uuid.uuid4()}"
    events = [{"type": "view", "member_id": member_id, "item_id": item} for item in viewed]
    events.append(
        {
            "type": "purchase",
            "member_id": member_id,
            "order_id": f"o-{member_id}",
            "items": [{"item_id": bought, "quantity": 2, "price": 4.25}],
        }
    )
    with fleet.client() as http:
        popular = http.get(f"/v1/members/nobody-{uuid.uuid4()}/recommendations").json()["items"]
        sent = http.post("/v1/events", json={"events": events})
        assert sent.status_code == 202, sent.text
        assert sent.json()["accepted"] == 5

        def profile_with_order():
            reply = http.get(f"/v1/members/{member_id}/profile")
            return (
                reply.status_code == 200 and reply.json()["rfm"]["frequency"] == 1 and reply.json()
            )

        profile = poll(profile_with_order)
        assert profile["rfm"]["monetary"] == pytest.approx(8.5)
        assert profile["rfm"]["recency_days"] < 1
        assert bought in profile["purchased_item_ids"]
        assert profile["categories"][0]["category"] == category
        assert {r["item_id"] for r in profile["recent_items"]} >= set(viewed)

        def leaning_recommendations():
            reply = http.get(f"/v1/members/{member_id}/recommendations", params={"limit": 10})
            items = reply.json()["items"]
            return share(items, category) >= 0.5 and items

        items = poll(leaning_recommendations)
    # The home page may bring back what the member bought (buy again), saying so.
    for item in items:
        if item["item_id"] == bought:
            assert "you bought this before" in item["reasons"]
    assert share(items, category) > share(popular, category)


def test_invalid_events_are_rejected_one_by_one(fleet: RunningFleet):
    member_id = f"it-{uuid.uuid4()}"
    batch = {
        "events": [
            {"type": "view", "member_id": member_id, "item_id": "85123A"},
            {"type": "view", "member_id": member_id},
            {"type": "teleport", "member_id": member_id, "item_id": "85123A"},
            {"type": "add_to_cart", "member_id": member_id, "item_id": "85123A"},
        ]
    }
    with fleet.client() as http:
        reply = http.post("/v1/events", json=batch)
        assert reply.status_code == 202
        body = reply.json()
        assert body["accepted"] == 2
        assert [r["index"] for r in body["rejected"]] == [1, 2]
        assert "needs item_id or items" in body["rejected"][0]["reason"]
        assert "type" in body["rejected"][1]["reason"]
        assert http.post("/v1/events", content=b"{not json").status_code == 400
        profile = poll(
            lambda: http.get(f"/v1/members/{member_id}/profile").json().get("events") == 2
        )
    assert profile


def test_similar_items_profile_404_offers_and_catalog(fleet: RunningFleet):
    ranked = bestsellers_by_category()
    item = ranked["christmas"][0] if "christmas" in ranked else next(iter(ranked.values()))[0]
    with fleet.client() as http:
        similar = http.get(f"/v1/items/{item}/similar", params={"limit": 5}).json()
        assert len(similar["items"]) == 5 and item not in {i["item_id"] for i in similar["items"]}
        assert http.get(f"/v1/members/nobody-{uuid.uuid4()}/profile").status_code == 404
        offers = http.get(f"/v1/members/{welcomed('new')}/offers").json()["offers"]
        assert [o["campaign_id"] for o in offers] == ["welcome"]

        # An item marked out of stock stops being recommended as similar.
        gone = similar["items"][0]["item_id"]
        put = http.put("/v1/items", json={"items": [{"item_id": gone, "in_stock": False}]})
        assert put.status_code == 200, put.text

        def without_gone():
            items = http.get(f"/v1/items/{item}/similar", params={"limit": 5}).json()["items"]
            return gone not in {i["item_id"] for i in items}

        assert poll(without_gone)
        assert http.get("/v1/members/x/recommendations", params={"limit": 0}).status_code == 422


def test_ops_endpoints(fleet: RunningFleet):
    with fleet.client() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz").json()
        assert set(ready["services"]) == {
            "ingestion",
            "profiles",
            "retrieval",
            "ranking",
            "campaigns",
            "analytics",
        }
        assert set(ready["services"].values()) == {"SERVING"}
        metrics = http.get("/metrics").text
    assert "recofleet_gateway_requests_total" in metrics
