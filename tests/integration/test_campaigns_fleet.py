"""On a running fleet, as docs/campaigns.md walks through: a seasonal campaign for past
buyers of garden items, its audience, the email export, purchases with the coupon, the
report against the held-out members; and the welcome offer's wording."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.conftest import RunningFleet, cli, free_port, wait_ready, welcomed

T = TypeVar("T")
SEASONAL = {
    "name": "Garden now",
    "category": "garden",
    "control_share": 0.2,
    # The template runs in spring; this one runs all year, so the test passes in December.
    "schedule": {"seasons": []},
}


@pytest.fixture
def marketer(fleet: RunningFleet) -> Iterator[httpx.Client]:
    with fleet.client(key=fleet.new_key("campaigns:write", name="campaigns tests")) as http:
        yield http


def _eventually(check: Callable[[], T], timeout_s: float = 10.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _opt_in_garden_buyers(fleet: RunningFleet) -> list[str]:
    """Every other past buyer of garden items opts in to email, as a shop's sign-up form
    would say (email is opt-in by default)."""
    with fleet.client() as admin:
        segment = {"name": "garden-buyers", "condition": "days_since_purchase.garden <= 365"}
        assert admin.post("/v1/segments", json=segment).status_code in (201, 409)
        page = admin.get("/v1/segments/garden-buyers/members", params={"limit": 1000}).json()
        members = [m["member_id"] for m in page["members"]][::2]
        for member_id in members:
            changed = admin.put(f"/v1/members/{member_id}/consent", json={"email": True})
            assert changed.status_code == 200, changed.text
    return members


def _purchase(member_id: str, value: float, coupon: str | None) -> dict[str, Any]:
    order = f"o-{uuid.uuid4().hex[:10]}"
    event: dict[str, Any] = {
        "event_id": f"e-{order}",
        "type": "purchase",
        "member_id": member_id,
        "order_id": order,
        "revenue": value,
        "items": [{"item_id": "22423", "price": value, "quantity": 1}],
    }
    if coupon:
        event["context"] = {"coupon": coupon}
    return event


def test_a_seasonal_campaign_is_exported_redeemed_and_measured(
    fleet: RunningFleet, marketer: httpx.Client, tmp_path: Any
) -> None:
    opted_in = _opt_in_garden_buyers(fleet)
    created = marketer.post("/v1/campaigns?template=seasonal", json=SEASONAL)
    assert created.status_code == 201, created.text
    cid = created.json()["campaign_id"]

    def counted() -> dict[str, Any] | None:
        found: dict[str, Any] = marketer.get(f"/v1/campaigns/{cid}/audience").json()
        return found if found["by_channel"]["email"] == len(opted_in) else None

    audience = _eventually(counted)
    assert audience is not None, marketer.get(f"/v1/campaigns/{cid}/audience").text
    assert audience["members"] > len(opted_in)

    out = tmp_path / "garden.csv"
    cli(fleet.env, "campaigns", "export", cid, "--channel", "email", "--output", str(out))
    rows = list(csv.DictReader(out.open()))
    held_out = len(opted_in) - len(rows)
    assert rows and held_out > 0
    assert {r["member_id"] for r in rows} <= set(opted_in)
    assert len({r["coupon_code"] for r in rows}) == len(rows)
    assert all(r["coupon_code"].startswith("SEASON-") for r in rows)
    again = marketer.post(f"/v1/campaigns/{cid}/export", params={"channel": "email"})
    assert list(csv.DictReader(io.StringIO(again.text))) == []  # one message a week

    redeemers = rows[: max(2, len(rows) // 3)]
    events = [_purchase(r["member_id"], 40.0, r["coupon_code"]) for r in redeemers]
    with fleet.client() as shop:
        assert shop.post("/v1/events", json={"events": events}).status_code in (200, 202)
        # Delivered twice, still one redemption per order.
        assert shop.post("/v1/events", json={"events": events}).status_code in (200, 202)

    def redeemed() -> dict[str, Any] | None:
        report: dict[str, Any] = marketer.get(f"/v1/campaigns/{cid}/report").json()
        return report if report["redemptions"] == len(redeemers) else None

    report = _eventually(redeemed)
    assert report is not None, marketer.get(f"/v1/campaigns/{cid}/report").text
    assert report["exposures"] == {"email": len(rows)}
    assert report["members_exposed"] == len(rows)
    assert report["members_held_out"] == held_out
    assert report["cost"] == pytest.approx(len(redeemers) * 6.0)
    treatment = next(g for g in report["groups"] if g["group"] == "treatment")
    assert treatment["converters"] >= len(redeemers)
    assert "Welch" in report["method"]
    low, high = report["conversion_uplift"]["low"], report["conversion_uplift"]["high"]
    assert low <= report["conversion_uplift"]["value"] <= high


@pytest.fixture
def second_gateway(fleet: RunningFleet) -> Iterator[str]:
    """Another gateway process in front of the same fleet: a second replica."""
    env = {**fleet.env, "RECOFLEET_GATEWAY_PORT": str(free_port())}
    process = subprocess.Popen(
        [sys.executable, "-m", "services.gateway"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{env['RECOFLEET_GATEWAY_PORT']}"
    try:
        wait_ready(url, process, timeout_s=60)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_no_member_gets_past_a_cap_from_two_gateways_at_once(
    fleet: RunningFleet, marketer: httpx.Client, second_gateway: str
) -> None:
    member = f"capped-{uuid.uuid4().hex[:8]}"
    body = {
        "name": "Capped",
        "status": "active",
        "offer": {"discount_percent": 5, "coupon_code": "CAPPED5"},
        "channels": ["email"],
        "control_share": 0,
        "frequency_caps": {"email": {"max": 2, "per_days": 7}},
    }
    cid = marketer.post("/v1/campaigns", json=body).json()["campaign_id"]
    # A key of its own: a rate-limit bucket of its own on each gateway.
    reader = fleet.new_key("recommendations:read", name="caps test")
    with fleet.client() as shop:
        sent = shop.post("/v1/events", json={"events": [_purchase(member, 10.0, None)]})
        assert sent.status_code in (200, 202)
        assert shop.put(f"/v1/members/{member}/consent", json={"email": True}).status_code == 200

    def asks(url: str) -> int:
        with httpx.Client(base_url=url, headers={"x-api-key": reader}, timeout=10) as http:
            reply = http.get(f"/v1/members/{member}/offers", params={"channel": "email"})
            assert reply.status_code == 200, reply.text
            # Each answer vouched for: none fell back because campaigns failed meanwhile.
            assert not reply.json()["degraded"]
            return sum(o["campaign_id"] == cid for o in reply.json()["offers"])

    def reachable() -> bool:
        with httpx.Client(base_url=fleet.url, headers={"x-api-key": reader}) as http:
            asked = {"channel": "email", "preview": True}
            reply = http.get(f"/v1/members/{member}/offers", params=asked)
            return any(o["campaign_id"] == cid for o in reply.json()["offers"])

    assert _eventually(reachable)
    gateways = [fleet.url, second_gateway] * 10
    with ThreadPoolExecutor(max_workers=20) as pool:
        given = list(pool.map(asks, gateways))

    assert sum(given) == 2
    report = marketer.get(f"/v1/campaigns/{cid}/report").json()
    assert report["exposures"] == {"email": 2}


def test_the_welcome_offer_greets_a_new_visitor_in_its_settings_words(
    fleet: RunningFleet,
) -> None:
    visitor = welcomed("visitor")
    with fleet.client() as shop:
        reply = shop.get(f"/v1/members/{visitor}/offers", params={"channel": "web"})

    assert reply.status_code == 200 and not reply.json()["degraded"]
    [welcome] = [o for o in reply.json()["offers"] if o["campaign_id"] == "welcome"]
    assert welcome["title"] == "Welcome: 10% off your first order"
    assert welcome["coupon_code"] == "WELCOME10"
    assert welcome["channel"] == "onsite"
