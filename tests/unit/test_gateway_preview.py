"""Previewing a merchandising rule through the gateway: the real composer and a real
merchandising service (its servicer on an in-process gRPC server, a SQLite store), fake
profiles, retrieval and ranking stubs at the edge (ranking arranges with ranking's code)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from services.campaigns.merch_servicer import MerchandisingServicer
from services.campaigns.merchandising import MerchandisingSettings
from services.campaigns.store import SqlCatalogStore
from services.common.clock import Clock
from services.gateway.access_keys import SqlAccessKeyStore, create_key
from services.gateway.compose import COMPOSED, Composer
from services.gen.recofleet.campaigns.v1 import campaigns_pb2_grpc
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2
from services.gen.recofleet.retrieval.v1 import retrieval_pb2
from services.ranking.arrangement import arrange
from services.ranking.rankers import RankedItem
from tests.unit.test_gateway_http import ADMIN_KEY, app_with, memory_key_store, rpc_error, settings

AT = datetime(2026, 12, 1, 12, tzinfo=UTC)
PROPOSED = ["lamp", "mug", "rake", "vase"]
PIN_RAKE = {"action": "pin", "item_id": "rake", "position": 1}


def candidate(item_id: str, rank: int) -> common_pb2.Candidate:
    return common_pb2.Candidate(item_id=item_id, score=1.0 - rank / 10, source="als")


class FakeRetrieval:
    def __init__(self) -> None:
        self.asked: list[Any] = []

    async def GetCandidates(self, request: Any, timeout: float | None = None) -> Any:
        self.asked.append(request)
        return retrieval_pb2.CandidatesResponse(
            candidates=[candidate(item, n) for n, item in enumerate(PROPOSED)],
            model_version="v1",
        )

    GetPopularItems = GetCandidates


class FakeProfiles:
    """m-1 is a known member; m-private withdrew personalization consent."""

    async def GetProfile(self, request: Any, timeout: float | None = None) -> Any:
        consent = profiles_pb2.Consent(personalization=request.member_id != "m-private")
        return profiles_pb2.GetProfileResponse(
            profile=profiles_pb2.Profile(member_id=request.member_id, known=True, consent=consent)
        )


class FakeRanking:
    """Ranks by retrieval's score, then arranges as ranking does (pins, boosts, ...)."""

    def __init__(self) -> None:
        self.ranked = 0
        self.error: grpc.aio.AioRpcError | None = None

    async def Rank(self, request: ranking_pb2.RankRequest, timeout: float | None = None) -> Any:
        self.ranked += 1
        if self.error is not None:
            raise self.error
        ranked = [
            RankedItem(c.item_id, c.score, [], c.category)
            for c in sorted(request.candidates, key=lambda c: -c.score)
        ]
        ranked = arrange(ranked, request.arrangement, request.limit)
        return ranking_pb2.RankResponse(
            model="blend",
            variant="default",
            items=[
                common_pb2.ScoredItem(item_id=r.item_id, score=r.score, reasons=r.reasons)
                for r in ranked
            ],
        )


@dataclass
class Clients:
    merchandising: campaigns_pb2_grpc.MerchandisingServiceStub
    profiles: FakeProfiles = field(default_factory=FakeProfiles)
    retrieval: FakeRetrieval = field(default_factory=FakeRetrieval)
    ranking: FakeRanking = field(default_factory=FakeRanking)


@dataclass
class Gateway:
    http: httpx.AsyncClient
    clients: Clients
    keys: SqlAccessKeyStore
    shown: list[Any]

    async def preview(self, **body: Any) -> httpx.Response:
        return await self.http.post("/v1/rules/preview", json={"placement": "home", **body})


async def never_back(timeout_s: float) -> bool:
    return False


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    store = SqlCatalogStore.from_url(f"sqlite:///{tmp_path / 'campaigns.db'}")
    servicer = MerchandisingServicer(store, Clock.fixed(AT), MerchandisingSettings())
    server = grpc.aio.server()
    campaigns_pb2_grpc.add_MerchandisingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    clients = Clients(campaigns_pb2_grpc.MerchandisingServiceStub(channel))
    keys, gateway_settings = memory_key_store(), settings()
    app = app_with(gateway_settings, clients, keys)  # type: ignore[arg-type]
    composer = Composer(clients, gateway_settings, {s: never_back for s in COMPOSED})  # type: ignore[arg-type]
    shown: list[Any] = []
    composer.shown = lambda answer, sources: shown.append(answer)
    app.state.composer = composer
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"x-api-key": ADMIN_KEY},
    ) as http:
        yield Gateway(http, clients, keys, shown)
    await channel.close()
    await server.stop(None)
    store.close()


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["item_id"] for item in items]


async def test_the_draft_moves_the_pinned_item_and_nothing_else(gateway: Gateway) -> None:
    reply = await gateway.preview(member_id="m-1", rule={**PIN_RAKE, "name": "hero"})

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert ids(body["before"]) == PROPOSED
    assert ids(body["after"]) == ["rake", "lamp", "mug", "vase"]
    assert body["after"][0]["reasons"] == ["pinned by rule hero"]
    assert (body["model"], body["personalized"], body["member_id"]) == ("blend+als@v1", True, "m-1")
    # One set of candidates for both lists, and no answer was shown to anyone.
    assert len(gateway.clients.retrieval.asked) == 1
    assert gateway.shown == []


async def test_nothing_is_saved_and_the_saved_rules_apply_to_both_lists(gateway: Gateway) -> None:
    saved = await gateway.http.post(
        "/v1/rules", json={"placement": "home", "action": "pin", "item_id": "vase", "position": 1}
    )
    assert saved.status_code == 201, saved.text

    reply = await gateway.preview(member_id="m-1", rule={**PIN_RAKE, "position": 2})

    assert ids(reply.json()["before"]) == ["vase", "lamp", "mug", "rake"]
    assert ids(reply.json()["after"]) == ["vase", "rake", "lamp", "mug"]
    assert reply.json()["after"][1]["reasons"] == ["pinned by rule draft"]
    rules = (await gateway.http.get("/v1/rules")).json()["rules"]
    assert [r["definition"]["item_id"] for r in rules] == ["vase"]


async def test_a_visitor_or_a_member_without_consent_gets_the_rules_without_a_ranker(
    gateway: Gateway,
) -> None:
    for member in (None, "m-private"):
        reply = await gateway.preview(member_id=member, rule=PIN_RAKE)

        assert reply.status_code == 200, reply.text
        assert reply.json()["personalized"] is False
        assert ids(reply.json()["after"]) == ["rake", "lamp", "mug", "vase"]
    assert gateway.clients.ranking.ranked == 0
    # Nothing of the member's went to retrieval: the shop's popular items, as for anyone.
    asked = gateway.clients.retrieval.asked
    assert all(isinstance(r, retrieval_pb2.GetPopularItemsRequest) for r in asked)


async def test_a_product_page_preview_starts_from_the_item_in_view(gateway: Gateway) -> None:
    reply = await gateway.preview(
        placement="product", member_id="m-1", item_id="mug", rule=PIN_RAKE, limit=3
    )

    assert reply.status_code == 200, reply.text
    asked = gateway.clients.retrieval.asked[0]
    assert (asked.placement, list(asked.context_item_ids)) == ("product", ["mug"])
    assert ids(reply.json()["after"])[0] == "rake" and len(reply.json()["after"]) == 3


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"rule": {**PIN_RAKE, "position": 0}}, "rule.position: "),
        ({"rule": {**PIN_RAKE, "action": "pinn"}}, "rule.action: "),
        ({"rule": {**PIN_RAKE, "ends_at": "9999-12-31T23:59:59-01:00"}}, "rule.ends_at: "),
        ({"rule": {**PIN_RAKE, "placement": "cart"}}, "rule.placement: 'cart' is not the"),
        ({"rule": PIN_RAKE, "placement": "attic"}, "placement: Input should be"),
        ({"rule": PIN_RAKE, "limit": 101}, "limit must be at most"),
        ({"rule": PIN_RAKE, "colour": "red"}, "colour: Extra inputs are not permitted"),
        ({}, "rule: Field required"),
    ],
)
async def test_a_wrong_preview_is_422_naming_the_field(
    gateway: Gateway, body: dict[str, Any], detail: str
) -> None:
    reply = await gateway.preview(**body)

    assert reply.status_code == 422, reply.text
    assert detail in reply.json()["detail"]


async def test_a_service_that_fails_gives_no_preview_rather_than_a_wrong_one(
    gateway: Gateway,
) -> None:
    gateway.clients.ranking.error = rpc_error(grpc.StatusCode.UNAVAILABLE, "down")

    reply = await gateway.preview(member_id="m-1", rule=PIN_RAKE)

    assert reply.status_code == 503, reply.text
    assert "ranking" in reply.json()["detail"] and reply.headers["retry-after"] == "1"


async def test_previews_need_an_admin_key(gateway: Gateway) -> None:
    _, marketer = create_key(gateway.keys, ["segments:write", "recommendations:read"], "tests")

    refused = await gateway.http.post(
        "/v1/rules/preview",
        json={"placement": "home", "rule": PIN_RAKE},
        headers={"x-api-key": marketer},
    )

    assert refused.status_code == 403 and "'admin'" in refused.json()["detail"]


async def test_a_member_named_by_email_is_answered_by_token(gateway: Gateway) -> None:
    reply = await gateway.preview(member_id="ann@example.com", rule=PIN_RAKE)

    assert reply.status_code == 200, reply.text
    assert reply.json()["member_id"].startswith("pii:")
    assert "ann" not in reply.text
