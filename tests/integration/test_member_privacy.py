"""What members allowed and asked, on a running fleet, on SQLite and on PostgreSQL:
consent (personalization and per channel), erasure (nothing left in any store or model
file, events in flight included), identity stitching, access keys."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from tests.integration.conftest import POSTGRES_URL, SEGMENT_WRITE_KEY, RunningFleet, welcomed
from tests.integration.test_fleet import bestsellers_by_category, poll

pytestmark = pytest.mark.integration


def member() -> str:
    """A new member to whom the welcome offer goes until they withdraw consent."""
    return welcomed("it")


def send(http: httpx.Client, *events: dict[str, Any]) -> None:
    reply = http.post("/v1/events", json={"events": list(events)})
    assert reply.status_code == 202, reply.text
    assert reply.json()["rejected"] == [], reply.text


def views(member_id: str, items: list[str], at: datetime | None = None) -> list[dict[str, Any]]:
    stamp = (at or datetime.now(UTC)).isoformat()
    return [
        {"type": "view", "member_id": member_id, "item_id": item, "timestamp": stamp}
        for item in items
    ]


def profile(http: httpx.Client, member_id: str) -> dict[str, Any]:
    reply = http.get(f"/v1/members/{member_id}/profile")
    return reply.json() if reply.status_code == 200 else {}


def offers(http: httpx.Client, member_id: str, channel: str | None = None) -> list[str]:
    params = {"channel": channel} if channel else {}
    reply = http.get(f"/v1/members/{member_id}/offers", params=params)
    assert reply.status_code == 200, reply.text
    return [o["campaign_id"] for o in reply.json()["offers"]]


def recommended(http: httpx.Client, member_id: str) -> dict[str, Any]:
    reply = http.get(f"/v1/members/{member_id}/recommendations", params={"limit": 10})
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


@pytest.fixture(scope="module")
def garden_items() -> list[str]:
    by_category = bestsellers_by_category()
    category = sorted(by_category, key=lambda c: -len(by_category[c]))[1]
    return by_category[category][:6]


def test_withdrawn_personalization_consent_takes_effect_within_a_second(
    any_fleet: RunningFleet, garden_items: list[str]
) -> None:
    member_id = member()
    with any_fleet.client() as http:
        send(http, *views(member_id, garden_items))
        poll(lambda: profile(http, member_id).get("events") == len(garden_items))
        assert recommended(http, member_id)["personalized"]
        assert offers(http, member_id) == ["welcome"]  # no order yet
        assert offers(http, member_id, "email") == []  # email is opt-in

        changed = http.put(f"/v1/members/{member_id}/consent", json={"personalization": False})
        assert changed.status_code == 200, changed.text
        assert changed.json()["consent"]["personalization"] is False
        withdrawn_at = datetime.now(UTC)

        # The very next request, well within a second.
        after = recommended(http, member_id)
        assert datetime.now(UTC) - withdrawn_at < timedelta(seconds=1)
        assert not after["personalized"]
        assert after["model"].startswith("non-personalized")
        shown = profile(http, member_id)
        assert shown["consent"]["personalization"] is False and shown["segments"] == []
        assert offers(http, member_id) == []

        http.put(f"/v1/members/{member_id}/consent", json={"personalization": True})
        assert recommended(http, member_id)["personalized"]


def test_a_member_without_a_channels_consent_is_never_in_its_export(
    any_fleet: RunningFleet, garden_items: list[str]
) -> None:
    tag = f"t{uuid.uuid4().hex[:10]}"
    members = [member() for _ in range(3)]
    with any_fleet.client() as http:
        for member_id in members:
            send(http, *views(member_id, garden_items[:1]))
        poll(lambda: all(profile(http, m).get("events") for m in members))
        for member_id in members:
            assert http.put(f"/v1/members/{member_id}/tags/{tag}").status_code == 200
        # Email is opt-in: only the first says yes; the last says yes to SMS only.
        http.put(f"/v1/members/{members[0]}/consent", json={"email": True})
        http.put(f"/v1/members/{members[2]}/consent", json={"sms": True, "email": False})
        made = http.post("/v1/segments", json={"name": tag, "condition": f"'{tag}' in tags"})
        assert made.status_code == 201, made.text
        assert made.json()["size"] == 3

        def exported(channel: str | None) -> list[str]:
            params = {"format": "jsonl", **({"channel": channel} if channel else {})}
            reply = http.get(f"/v1/segments/{tag}/export", params=params)
            assert reply.status_code == 200, reply.text
            return sorted(json.loads(line)["member_id"] for line in reply.text.splitlines())

        assert exported(None) == sorted(members)
        assert exported("email") == [members[0]]
        assert exported("sms") == [members[2]]
        page = http.get(f"/v1/segments/{tag}/members", params={"channel": "email"}).json()
        assert [m["member_id"] for m in page["members"]] == [members[0]]


def test_an_erased_member_is_gone_from_every_store_and_model(
    any_fleet: RunningFleet, garden_items: list[str]
) -> None:
    member_id = f"erase-{uuid.uuid4().hex}"
    visitor = f"anon-{uuid.uuid4().hex}"
    with any_fleet.client() as http:
        send(http, *views(member_id, garden_items))
        send(http, *views(visitor, garden_items[:2]))
        link_visitor(http, visitor, member_id)
        poll(lambda: profile(http, member_id).get("events") == len(garden_items) + 2)
        assert http.put(f"/v1/members/{member_id}/tags/erase-test").status_code == 200
        http.put(f"/v1/members/{member_id}/consent", json={"email": True})

        # Still in flight when the erasure is asked: sent, not yet applied.
        send(http, *views(member_id, garden_items[2:4]))
        erased = http.delete(f"/v1/members/{member_id}")
        assert erased.status_code == 202, erased.text
        # Arriving after the erasure, but from before it (a late, queued event).
        before = datetime.now(UTC) - timedelta(seconds=30)
        send(http, *views(member_id, garden_items[:1], at=before))
        send(http, *views(visitor, garden_items[:1], at=before))

        poll(lambda: http.get(f"/v1/members/{member_id}/profile").status_code == 404)
        # Give every consumer time to apply what was on the bus, then look everywhere.
        sentinel = member()
        send(http, *views(sentinel, garden_items[:1]))
        poll(lambda: profile(http, sentinel).get("events") == 1, timeout_s=30)
        poll(lambda: not stores_holding(any_fleet, member_id, visitor), timeout_s=30)
        assert http.get(f"/v1/members/{visitor}/profile").status_code == 404
        assert erased.json()["erasure_id"]
    assert not model_files_holding(any_fleet.data_dir, member_id)


def link_visitor(http: httpx.Client, visitor: str, member_id: str) -> None:
    identify = {"type": "identify", "anonymousId": visitor, "userId": member_id}
    reply = http.post("/segment/v1/identify", json=identify, auth=(SEGMENT_WRITE_KEY, ""))
    assert reply.status_code == 200, reply.text


def test_an_anonymous_visitors_views_shape_the_members_recommendations_after_login(
    any_fleet: RunningFleet, garden_items: list[str]
) -> None:
    visitor, member_id = f"anon-{uuid.uuid4().hex}", member()
    with any_fleet.client() as http:
        before = recommended(http, member_id)
        page_views = [
            {
                "type": "track",
                "event": "Product Viewed",
                "anonymousId": visitor,
                "messageId": f"{visitor}-{n}",
                "properties": {"product_id": item},
            }
            for n, item in enumerate(garden_items)
        ]
        sent = http.post(
            "/segment/v1/batch", json={"batch": page_views}, auth=(SEGMENT_WRITE_KEY, "")
        )
        assert sent.status_code == 200, sent.text
        poll(lambda: profile(http, visitor).get("events") == len(garden_items))

        link_visitor(http, visitor, member_id)
        merged = poll(
            lambda: (
                profile(http, member_id).get("events") == len(garden_items)
                and profile(http, member_id)
            )
        )
        assert {r["item_id"] for r in merged["recent_items"]} == set(garden_items)
        assert http.get(f"/v1/members/{visitor}/profile").status_code == 404

        def changed() -> dict[str, Any] | None:
            after = recommended(http, member_id)
            ids = [i["item_id"] for i in after["items"]]
            return after if ids != [i["item_id"] for i in before["items"]] else None

        after = poll(changed, timeout_s=30)
        assert after["personalized"]
        # Later anonymous events of the same visitor land on the member.
        send(http, *views(visitor, garden_items[:1]))
        poll(lambda: profile(http, member_id).get("events") == len(garden_items) + 1)


def test_keys_are_checked_on_both_databases(any_fleet: RunningFleet) -> None:
    reader = any_fleet.new_key("profiles:read")
    with httpx.Client(base_url=any_fleet.url, timeout=10) as http:
        assert http.get("/v1/segments").status_code == 401
        listed = http.get("/v1/segments", headers={"Authorization": f"Bearer {reader}"})
        assert listed.status_code == 200, listed.text
        lifecycle = {s["name"] for s in listed.json()["segments"] if s["kind"] == "lifecycle"}
        assert lifecycle == {
            "new",
            "active",
            "high-value",
            "loyal",
            "at-risk",
            "churned",
            "prospect",
        }
        refused = http.post(
            "/v1/segments",
            json={"name": "x", "condition": "frequency > 1"},
            headers={"X-API-Key": reader},
        )
        assert refused.status_code == 403 and "segments:write" in refused.json()["detail"]


# --- where a member could be left behind ---------------------------------------------


def stores_holding(fleet: RunningFleet, *needles: str) -> list[str]:
    """Every store that still holds one of `needles`: SQLite files byte for byte (free pages
    and the write-ahead log included), PostgreSQL tables cell by cell."""
    if fleet.schemas:
        return postgres_holding(fleet.schemas.values(), needles)
    found = []
    for path in sorted(fleet.data_dir.glob("*.db*")):
        data = path.read_bytes()
        found += [f"{path.name}: {n}" for n in needles if n.encode() in data]
    return found


def postgres_holding(schemas: Any, needles: tuple[str, ...]) -> list[str]:
    engine = create_engine(POSTGRES_URL)
    found = []
    try:
        with engine.connect() as conn:
            for schema in schemas:
                for table in inspect(conn).get_table_names(schema=schema):
                    rows = conn.execute(text(f'SELECT t::text FROM "{schema}"."{table}" t'))
                    cells = "\n".join(row[0] for row in rows)
                    found += [f"{schema}.{table}: {n}" for n in needles if n in cells]
    finally:
        engine.dispose()
    return found


def model_files_holding(data_dir: Path, needle: str) -> list[str]:
    return [
        str(path)
        for path in (data_dir / "models").rglob("*")
        if path.is_file() and needle.encode() in path.read_bytes()
    ]
