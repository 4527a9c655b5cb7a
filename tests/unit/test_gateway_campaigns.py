"""Campaigns through the gateway, over a real campaigns servicer (in-process gRPC server, a
SQLite store); profiles and analytics faked at the edge."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from services.campaigns.campaign_store import SqlCampaignStore
from services.campaigns.desk import CampaignDesk
from services.campaigns.servicer import CampaignsServicer
from services.campaigns.settings import CampaignsSettings
from services.gateway.access_keys import create_key
from services.gen.recofleet.analytics.v1 import analytics_pb2
from services.gen.recofleet.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc
from tests.unit.test_campaign_desk import NOW, SECRET, MovableClock, Published, Shop
from tests.unit.test_gateway_http import ADMIN_KEY, app_with, memory_key_store, settings

SEASONAL = {"name": "Spring garden", "category": "garden", "control_share": 0.0}


class FakeOutcomes:
    """Analytics' comparison as a test sets it."""

    def __init__(self) -> None:
        self.answer = analytics_pb2.CampaignOutcomes()

    async def outcomes(
        self, campaign_id: str, confidence: float, window_days: float
    ) -> analytics_pb2.CampaignOutcomes:
        return self.answer


async def _no_rules(request: Any, context: Any) -> campaigns_pb2.ApplyRulesResponse:
    return campaigns_pb2.ApplyRulesResponse(candidates=request.candidates)


class Clients:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.campaigns = campaigns_pb2_grpc.CampaignsServiceStub(channel)


class Fleet:
    def __init__(self, http: httpx.AsyncClient, shop: Shop, outcomes: FakeOutcomes, app: Any):
        self.http, self.shop, self.outcomes, self.app = http, shop, outcomes, app

    async def create(self, body: dict[str, Any], template: str = "seasonal") -> dict[str, Any]:
        reply = await self.http.post(f"/v1/campaigns?template={template}", json=body)
        assert reply.status_code == 201, reply.text
        found: dict[str, Any] = reply.json()
        return found


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    store = SqlCampaignStore.from_url(f"sqlite:///{tmp_path / 'campaigns.db'}", SECRET)
    shop, outcomes = Shop(), FakeOutcomes()
    desk = CampaignDesk(store, shop, Published(), MovableClock(NOW), CampaignsSettings())  # type: ignore[arg-type]
    servicer = CampaignsServicer(desk, outcomes, CampaignsSettings(), _no_rules)  # type: ignore[arg-type]
    server = grpc.aio.server()
    campaigns_pb2_grpc.add_CampaignsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    keys = memory_key_store()
    app = app_with(settings(), Clients(channel), keys)  # type: ignore[arg-type]
    app.state.test_keys = keys
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"x-api-key": ADMIN_KEY},
    ) as http:
        yield Fleet(http, shop, outcomes, app)
    await channel.close()
    await server.stop(None)
    store.close()


async def test_a_seasonal_campaign_from_its_template_shows_its_audience(fleet: Fleet) -> None:
    for n in range(5):
        fleet.shop.add(f"m-{n}", **{"days_since_purchase.garden": 20.0 + n})
    fleet.shop.add("never-garden")
    fleet.shop.consent["m-0"]["email"] = False

    created = await fleet.create(SEASONAL)
    audience = await fleet.http.get(f"/v1/campaigns/{created['campaign_id']}/audience")

    assert created["status"] == "active"
    assert created["definition"]["offer"]["discount_percent"] == 15
    assert created["definition"]["frequency_caps"] == {"email": {"max": 1, "per_days": 7.0}}
    assert audience.status_code == 200
    assert audience.json()["members"] == 5
    assert audience.json()["by_channel"] == {"email": 4}


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("/v1/campaigns", {"name": "x", "offer": {"discount_percent": 500}}, "offer"),
        ("/v1/campaigns?template=seasonal", {"name": "No category"}, "category"),
        ("/v1/campaigns?template=seasonal", {**SEASONAL, "channels": ["fax"]}, "channels.0"),
        ("/v1/campaigns?template=nope", {"name": "x"}, "template"),
    ],
)
async def test_an_invalid_campaign_is_a_422_naming_the_field(
    fleet: Fleet, path: str, body: dict[str, Any], named: str
) -> None:
    reply = await fleet.http.post(path, json=body)

    assert reply.status_code == 422, reply.text
    assert named in reply.json()["detail"]


async def test_offers_respect_the_weekly_cap_and_pausing(fleet: Fleet) -> None:
    fleet.shop.add("m-1", **{"days_since_purchase.garden": 3.0})
    created = await fleet.create(SEASONAL)
    cid = created["campaign_id"]

    first = await fleet.http.get("/v1/members/m-1/offers", params={"channel": "email"})
    second = await fleet.http.get("/v1/members/m-1/offers", params={"channel": "email"})

    [offer] = first.json()["offers"]
    assert offer["campaign_id"] == cid and offer["channel"] == "email"
    assert offer["coupon_code"].startswith("SEASON-")
    assert offer["title"] == "Spring garden: 15% off"
    assert second.json()["offers"] == []
    paused = await fleet.http.post(f"/v1/campaigns/{cid}/pause")
    assert paused.json()["status"] == "paused" and not paused.json()["live"]
    again = await fleet.http.post(f"/v1/campaigns/{cid}/pause")
    assert again.status_code == 409


async def test_the_export_is_csv_with_one_code_per_member_then_capped(fleet: Fleet) -> None:
    for n in range(4):
        fleet.shop.add(f"m-{n}", **{"days_since_purchase.garden": 10.0})
    cid = (await fleet.create(SEASONAL))["campaign_id"]

    reply = await fleet.http.post(f"/v1/campaigns/{cid}/export", params={"channel": "email"})
    again = await fleet.http.post(f"/v1/campaigns/{cid}/export", params={"channel": "email"})
    wrong = await fleet.http.post(f"/v1/campaigns/{cid}/export", params={"channel": "sms"})

    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert reply.headers["content-type"].startswith("text/csv")
    assert sorted(r["member_id"] for r in rows) == ["m-0", "m-1", "m-2", "m-3"]
    assert len({r["coupon_code"] for r in rows}) == 4
    assert all(r["discount_percent"] == "15.0" and r["expires_at"] for r in rows)
    assert list(csv.DictReader(io.StringIO(again.text))) == []
    assert wrong.status_code == 422 and "channel" in wrong.json()["detail"]


async def test_the_report_shows_uplift_against_control_and_roi(fleet: Fleet) -> None:
    fleet.shop.add("m-1", **{"days_since_purchase.garden": 3.0})
    cid = (await fleet.create(SEASONAL))["campaign_id"]
    await fleet.http.get("/v1/members/m-1/offers", params={"channel": "email"})
    fleet.outcomes.answer = analytics_pb2.CampaignOutcomes(
        campaign_id=cid,
        groups=[
            analytics_pb2.CampaignGroup(group="treatment", members=1000, converters=150),
            analytics_pb2.CampaignGroup(group="control", members=100, converters=10),
        ],
        differences=[
            analytics_pb2.Difference(
                metric="conversion_rate",
                absolute=0.05,
                low=0.01,
                high=0.09,
                p_value=0.02,
                method="two-proportion z-test",
            ),
            analytics_pb2.Difference(
                metric="revenue_per_member",
                absolute=2.0,
                low=0.5,
                high=3.5,
                p_value=0.01,
                method="Welch's t-test",
            ),
        ],
    )

    reply = await fleet.http.get(f"/v1/campaigns/{cid}/report")

    report = reply.json()
    assert reply.status_code == 200, reply.text
    assert report["exposures"] == {"email": 1}
    assert report["audience"] == 1
    assert (report["members_exposed"], report["members_held_out"]) == (1000, 100)
    assert report["conversion_uplift"]["low"] == 0.01
    assert report["incremental_revenue"] == 2000.0
    assert "Welch" in report["method"] and "z-test" in report["method"]
    assert report["roi"] is None  # nothing redeemed, no cost yet


async def test_campaigns_need_the_campaigns_scope(fleet: Fleet) -> None:
    _, reader = create_key(fleet.app.state.test_keys, ["recommendations:read"])
    _, marketer = create_key(fleet.app.state.test_keys, ["campaigns:write"])

    refused = await fleet.http.get("/v1/campaigns", headers={"x-api-key": reader})
    allowed = await fleet.http.get("/v1/campaigns", headers={"x-api-key": marketer})

    assert refused.status_code == 403 and "campaigns:write" in refused.json()["detail"]
    assert allowed.status_code == 200


async def test_figures_that_cannot_be_computed_are_null_and_the_confidence_is_bounded(
    fleet: Fleet,
) -> None:
    fleet.shop.add("m-1", **{"days_since_purchase.garden": 3.0})
    cid = (await fleet.create(SEASONAL))["campaign_id"]
    one = analytics_pb2.Estimate(value=10.0, low=float("nan"), high=float("inf"), n=1)
    fleet.outcomes.answer = analytics_pb2.CampaignOutcomes(
        groups=[analytics_pb2.CampaignGroup(group="treatment", members=1, revenue_per_member=one)]
    )

    reply = await fleet.http.get(f"/v1/campaigns/{cid}/report")
    sure = await fleet.http.get(f"/v1/campaigns/{cid}/report", params={"confidence": 0.9999})

    [treatment] = reply.json()["groups"]
    assert reply.status_code == 200
    assert treatment["revenue_per_member"] == {"value": 10.0, "low": None, "high": None, "n": 1}
    assert sure.status_code == 422


# What the audit sent: each was stored and activated, then broke everyone's offers.
AUDITED_OFFER = {"discount_percent": 10, "coupon_code": "AUD10"}
AUDITED = {
    "name": "x",
    "offer": AUDITED_OFFER,
    "channels": ["onsite"],
    "status": "active",
    "control_share": 0.0,
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"schedule": {"ends_at": "9999-12-31T23:59:59-14:00"}}, "schedule.ends_at: "),
        ({"schedule": {"starts_at": "0001-01-01T00:00:00+01:00"}}, "schedule.starts_at: "),
        ({"audience": {"condition": "(("}}, "audience.condition: "),
        ({"audience": {"segments": ["../x"]}}, "audience.segments.0: "),
        (
            {"offer": {**AUDITED_OFFER, "expires_after_days": 3_000_000}},
            "offer.expires_after_days: ",
        ),
    ],
)
async def test_a_campaign_that_would_break_offers_is_a_422_at_create_and_at_update(
    fleet: Fleet, change: dict[str, Any], named: str
) -> None:
    fleet.shop.add("m-1")
    created = await fleet.http.post("/v1/campaigns", json={**AUDITED, **change})
    kept = await fleet.http.post("/v1/campaigns", json=AUDITED)
    cid = kept.json()["campaign_id"]
    updated = await fleet.http.put(f"/v1/campaigns/{cid}", json={**AUDITED, **change})
    offers = await fleet.http.get("/v1/members/m-1/offers")

    assert created.status_code == 422, created.text
    assert created.json()["detail"].startswith(named)
    assert updated.status_code == 422, updated.text
    assert updated.json()["detail"].startswith(named)
    assert offers.status_code == 200, offers.text
    assert not offers.json()["degraded"]
    assert [o["campaign_id"] for o in offers.json()["offers"]] == [cid]


async def test_a_campaign_may_end_at_the_last_instant_an_offer_can_carry(fleet: Fleet) -> None:
    fleet.shop.add("m-1")
    last = {"schedule": {"ends_at": "9999-12-31T23:59:59+00:00"}}
    created = await fleet.http.post("/v1/campaigns", json={**AUDITED, **last})

    offers = await fleet.http.get("/v1/members/m-1/offers")

    assert created.status_code == 201, created.text
    assert offers.status_code == 200, offers.text
    [offer] = offers.json()["offers"]
    assert offer["expires_at"].startswith("9999-12-31T23:59:59")
