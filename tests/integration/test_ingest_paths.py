"""What shops send arrives: in their formats, within clear limits, once, and without PII."""

from __future__ import annotations

import uuid

import httpx
import pytest

from services.common.bus.base import EVENTS_TOPIC
from services.common.bus.local_log import LocalLogBus
from services.common.pii import PiiScrubber
from tests.integration.conftest import SEGMENT_WRITE_KEY, RunningFleet
from tests.integration.test_fleet import poll

pytestmark = pytest.mark.integration


def profile(http: httpx.Client, member_id: str) -> dict:
    reply = http.get(f"/v1/members/{member_id}/profile")
    return reply.json() if reply.status_code == 200 else {}


def test_a_segment_batch_posted_like_to_segment_changes_the_profile(fleet: RunningFleet):
    member_id = f"seg-{uuid.uuid4()}"
    batch = {
        "batch": [
            {
                "type": "track",
                "event": "Product Viewed",
                "userId": member_id,
                "messageId": f"{member_id}-1",
                "properties": {"product_id": "85123A", "price": 2.55},
            },
            {
                "type": "track",
                "event": "Order Completed",
                "userId": member_id,
                "messageId": f"{member_id}-2",
                "properties": {
                    "order_id": f"o-{member_id}",
                    "total": 12.75,
                    "currency": "GBP",
                    "products": [{"product_id": "85123A", "quantity": 5, "price": 2.55}],
                },
            },
            {"type": "identify", "userId": member_id, "traits": {"plan": "gold"}},
        ]
    }
    with fleet.client() as http:
        denied = http.post("/segment/v1/batch", json=batch, auth=("wrong-key", ""))
        assert denied.status_code == 401
        reply = http.post("/segment/v1/batch", json=batch, auth=(SEGMENT_WRITE_KEY, ""))
        assert reply.status_code == 200, reply.text
        assert reply.json()["success"] is True
        assert (reply.json()["accepted"], reply.json()["ignored"]) == (2, 1)
        found = poll(lambda: profile(http, member_id).get("rfm", {}).get("frequency") == 1)
        assert found
        body = profile(http, member_id)
    assert body["rfm"]["monetary"] == pytest.approx(12.75)
    assert "85123A" in body["purchased_item_ids"]


def test_a_ga4_measurement_protocol_request_changes_the_profile(fleet: RunningFleet):
    """What a server-side GA4 sender posts to www.google-analytics.com, host changed only:
    the access key is the `api_secret`, and an accepted request is a 204."""
    member_id = f"ga4-{uuid.uuid4()}"
    body = {
        "client_id": f"{member_id}.visitor",
        "user_id": member_id,
        "events": [
            {"name": "view_item", "params": {"items": [{"item_id": "85123A", "price": 2.55}]}},
            {
                "name": "purchase",
                "params": {
                    "transaction_id": f"t-{member_id}",
                    "currency": "GBP",
                    "value": 12.75,
                    "items": [{"item_id": "85123A", "quantity": 5, "price": 2.55}],
                },
            },
        ],
    }
    writer = fleet.new_key("events:write", name="ga4 sender")
    reader = fleet.new_key("profiles:read", name="ga4 reader")
    with httpx.Client(base_url=fleet.url, timeout=10.0) as sender:
        for secret in ("rf_wrong", reader):
            refused = sender.post("/mp/collect", params={"api_secret": secret}, json=body)
            assert refused.status_code in (401, 403), refused.text
        params = {"measurement_id": "G-RECOFLEET", "api_secret": writer}
        reply = sender.post("/mp/collect", params=params, json=body)
    assert reply.status_code == 204, reply.text
    with fleet.client() as http:
        assert poll(lambda: profile(http, member_id).get("rfm", {}).get("frequency") == 1)
        found = profile(http, member_id)
    assert found["rfm"]["monetary"] == pytest.approx(12.75)
    assert found["events"] == 2


def test_the_same_event_sent_twice_counts_once(fleet: RunningFleet):
    member_id = f"dup-{uuid.uuid4()}"
    purchase = {
        "event_id": f"{member_id}-order",
        "type": "purchase",
        "member_id": member_id,
        "order_id": "o-1",
        "items": [{"item_id": "85123A", "quantity": 1, "price": 10.0}],
    }
    later = {"type": "view", "member_id": member_id, "item_id": "22423"}
    with fleet.client() as http:
        assert http.post("/v1/events", json=purchase).status_code == 202
        assert http.post("/v1/events", json={"events": [purchase, later]}).status_code == 202
        poll(lambda: profile(http, member_id).get("events") == 2)
        body = profile(http, member_id)
    assert body["rfm"]["frequency"] == 1
    assert body["rfm"]["monetary"] == pytest.approx(10.0)


def test_emails_and_phones_are_stored_nowhere_in_clear(fleet: RunningFleet):
    email, phone = f"jane.{uuid.uuid4().hex[:8]}@example.com", "+44 7700 900777"
    event = {
        "type": "view",
        "member_id": email,
        "item_id": "85123A",
        "context": {"traits": {"email": email, "phone": phone}, "note": f"call {phone}"},
    }
    with fleet.client() as http:
        reply = http.post("/v1/events", json=event)
        assert reply.status_code == 202
        assert email not in reply.text
        # The member is known under the token of their email, never the email itself.
        secret = (fleet.data_dir / "secrets" / "pii.key").read_text().strip().encode()
        token = PiiScrubber(secret).token(email)
        assert poll(lambda: profile(http, token).get("events") == 1)
        # Asked by the address, the gateway finds the same member, and never echoes it.
        by_address = http.get(f"/v1/members/{email}/profile")
        assert by_address.status_code == 200
        assert by_address.json()["member_id"] == token and email not in by_address.text
    stored = _everything_stored(fleet)
    for clear in (email, phone, "7700 900777", email.split("@")[0]):
        assert clear.encode() not in stored


def _everything_stored(fleet: RunningFleet) -> bytes:
    """Every byte the fleet keeps: the bus, the stores (with their WAL), the models, the logs."""
    return b"".join(p.read_bytes() for p in fleet.data_dir.rglob("*") if p.is_file())


def test_limits_answer_413_and_429_and_lose_nothing_accepted(fleet: RunningFleet):
    member_id = f"lim-{uuid.uuid4()}"
    too_many = {"events": [{"type": "view", "member_id": member_id, "item_id": "85123A"}] * 1001}
    with fleet.client() as http:
        big = http.post("/v1/events", json=too_many)
        assert big.status_code == 413 and "at most 1000" in big.json()["detail"]
        huge = http.post("/v1/events", content=b"{" + b" " * 6_000_000 + b"}")
        assert huge.status_code == 413

        # A caller with an access key of its own, so that draining its bucket spares the
        # others (buckets are per verified key, whatever the address).
        headers = {"x-api-key": fleet.new_key("events:write", name="rate limit test")}
        statuses: list[int] = []
        # A burst of 50 and one more a second: sending faster than that soon meets a 429.
        while 429 not in statuses and len(statuses) < 1000:
            event = {"type": "view", "member_id": member_id, "item_id": "85123A"}
            event["event_id"] = f"{member_id}-{len(statuses)}"
            statuses.append(http.post("/v1/events", json=event, headers=headers).status_code)
        assert statuses[-1] == 429 and set(statuses[:50]) == {202}
        extra = {"type": "view", "member_id": member_id, "item_id": "1"}
        throttled = http.post("/v1/events", json=extra, headers=headers)
        assert throttled.status_code == 429 and "retry" in throttled.json()["detail"]
        assert "retry-after" in throttled.headers
        accepted = statuses.count(202)
        poll(lambda: profile(http, member_id).get("events") == accepted)


HOSTILE_SPELLINGS = [
    # (path, body, what must never be stored): each found by probing a running fleet.
    (
        "/v1/events",
        '{"type":"view","member_id":"grace.{tag}\\u0040example.com","item_id":"85123A"}',
        "grace.{tag}@example.com",
    ),
    (
        "/v1/events",
        '{"type":"view","member_id":"m-{tag}","item_id":"85123A",'
        '"context":{"em\\u0061il":"grace-{tag}"}}',
        "grace-{tag}",
    ),
    (
        "/v1/events",
        '{"type":"view","member_id":"m-{tag}","item_id":"85123A",'
        '"context":{"note":"grace.{tag}\\u0040example.com"}}',
        "grace.{tag}@example.com",
    ),
    (
        "/v1/events",
        '{"type":"search","member_id":"m-{tag}","query":"grace.{tag}\\u0040example.com"}',
        "grace.{tag}@example.com",
    ),
    (
        "/v1/events?format=segment",
        '{"type":"track","event":"Product Viewed","userId":"u-{tag}","properties":'
        '{"product_id":"85123A"},"context":{"traits":{"email":"grace.{tag}\\u0040example.com"}}}',
        "grace.{tag}@example.com",
    ),
    (
        "/segment/v1/track",
        '{"event":"Product Viewed","userId":"u-{tag}","properties":{"product_id":"85123A"},'
        '"context":{"traits":{"em\\u0061il":"grace-{tag}"}}}',
        "grace-{tag}",
    ),
]


@pytest.mark.parametrize(("path", "body", "clear"), HOSTILE_SPELLINGS)
def test_contact_data_written_with_json_escapes_is_stored_nowhere_in_clear(
    fleet: RunningFleet, path: str, body: str, clear: str
):
    tag = uuid.uuid4().hex[:10]
    body, clear = body.replace("{tag}", tag), clear.replace("{tag}", tag)
    with fleet.client() as http:
        reply = http.post(
            path,
            content=body.encode(),
            headers={"content-type": "application/json"},
            auth=(SEGMENT_WRITE_KEY, ""),
        )
        assert reply.status_code in (200, 202), reply.text
        assert reply.json()["accepted"] == 1
    poll(lambda: consumers_caught_up(fleet))
    assert clear.encode() not in _everything_stored(fleet)


def consumers_caught_up(fleet: RunningFleet) -> bool:
    """True once profiles and retrieval have applied everything on the events topic."""
    bus = LocalLogBus(fleet.data_dir / "bus", fsync=False)
    try:
        return all(bus.lag(group, EVENTS_TOPIC) == 0 for group in ("profiles", "retrieval"))
    finally:
        bus.close()
