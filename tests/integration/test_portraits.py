"""Portraits on the running fleet: a new member's first order, manual tags, the live sample."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from services.common.events import Event
from services.datasets.online_retail import load_jsonl_gz
from services.loading import SAMPLE_DIR
from tests.integration.conftest import RunningFleet
from tests.integration.test_fleet import poll

pytestmark = pytest.mark.integration


def test_a_new_members_first_order_makes_them_new_with_scores(fleet: RunningFleet):
    member_id = f"it-{uuid.uuid4()}"
    purchase = {
        "type": "purchase",
        "member_id": member_id,
        "order_id": f"o-{member_id}",
        "items": [{"item_id": "85123A", "quantity": 4, "price": 2.55, "category": "kitchen"}],
        "context": {"channel": "email", "coupon": "WELCOME10"},
    }
    with fleet.client() as http:
        sent = http.post("/v1/events", json={"events": [purchase]})
        assert sent.status_code == 202, sent.text

        def scored_profile():
            reply = http.get(f"/v1/members/{member_id}/profile")
            body = reply.json() if reply.status_code == 200 else {}
            return body.get("rfm", {}).get("r_score") is not None and body

        # Scores come from the boundaries the service computed over the loaded sample.
        profile = poll(scored_profile, timeout_s=60)

    assert profile["lifecycle"] == "new"
    assert profile["rfm"]["frequency"] == 1
    assert profile["rfm"]["r_score"] == 5  # just ordered
    assert 1 <= profile["rfm"]["f_score"] <= 5 and 1 <= profile["rfm"]["m_score"] <= 5
    assert profile["first_order_at"] == profile["last_order_at"]
    assert profile["affinities"][0]["category"] == "kitchen"
    assert profile["affinities"][0]["share"] == 1.0
    assert profile["preferred_channel"] == "email"
    assert profile["price"]["sensitivity"] == 1.0
    as_of = datetime.fromisoformat(profile["as_of"])
    assert abs(as_of - datetime.now(UTC)) < timedelta(minutes=5)


def test_a_manual_tag_appears_in_the_profile_and_disappears(fleet: RunningFleet):
    member_id = f"it-{uuid.uuid4()}"
    with fleet.client() as http:
        missing = http.put(f"/v1/members/{member_id}/tags/vip")
        assert missing.status_code == 404, missing.text
        sent = http.post(
            "/v1/events", json={"type": "view", "member_id": member_id, "item_id": "85123A"}
        )
        assert sent.status_code == 202, sent.text
        poll(lambda: http.get(f"/v1/members/{member_id}/profile").status_code == 200)

        tagged = http.put(f"/v1/members/{member_id}/tags/press-contact")
        assert tagged.status_code == 200, tagged.text
        assert [t["tag"] for t in tagged.json()["manual_tags"]] == ["press-contact"]
        manual = [
            t
            for t in http.get(f"/v1/members/{member_id}/profile").json()["tags"]
            if t["source"] == "manual"
        ]
        assert [t["tag"] for t in manual] == ["press-contact"]
        assert manual[0]["set_at"]

        assert http.delete(f"/v1/members/{member_id}/tags/press-contact").status_code == 200
        tags = http.get(f"/v1/members/{member_id}/profile").json()["tags"]
        assert all(t["tag"] != "press-contact" for t in tags)
        assert http.put(f"/v1/members/{member_id}/tags/Not%20A%20Tag").status_code == 422


def test_the_loaded_sample_looks_like_a_live_shop(fleet: RunningFleet):
    members = sorted({e.member_id for e in load_jsonl_gz(SAMPLE_DIR / "events.jsonl.gz", Event)})
    segments: Counter[str] = Counter()
    with fleet.client() as http:
        for member_id in members:
            reply = http.get(f"/v1/members/{member_id}/profile")
            assert reply.status_code == 200, reply.text
            segments[reply.json()["lifecycle"]] += 1

    # Re-dated by the loader: the newest orders are from the last day, so the sample has
    # members in every segment an order history can give, and most of them are not churned.
    assert set(segments) >= {"new", "active", "loyal", "high-value", "at-risk", "churned"}, segments
    assert segments["churned"] < len(members) / 4, segments
