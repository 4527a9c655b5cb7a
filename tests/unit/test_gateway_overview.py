"""The overview and the access key routes, in process, over fake services at the gRPC edge."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.gateway.access_keys import create_key
from services.gateway.compose import Recommendation
from services.gen.recofleet.ingestion.v1 import ingestion_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2
from services.gen.recofleet.retrieval.v1 import retrieval_pb2
from tests.unit.test_gateway_http import (
    ADMIN_KEY,
    EVENT,
    FakeIngestion,
    Gateway,
    rpc_error,
    settings,
)
from tests.unit.test_gateway_members import ts

DOWN = rpc_error(grpc.StatusCode.UNAVAILABLE, "down")


class Failing:
    """Raises `error` from every method named in `failing`."""

    def __init__(self) -> None:
        self.failing: dict[str, BaseException] = {}

    def _check(self, method: str) -> None:
        if method in self.failing:
            raise self.failing[method]


class Profiles(Failing):
    async def CountMembers(self, request: Any, timeout: float | None = None) -> Any:
        self._check("CountMembers")
        return profiles_pb2.MemberCount(members=600, as_of=ts())


class Retrieval(Failing):
    async def ListModels(self, request: Any, timeout: float | None = None) -> Any:
        self._check("ListModels")
        return retrieval_pb2.ListModelsResponse(
            models=[
                retrieval_pb2.ModelVersion(version="v1", trained_at="2026-11-30T10:00:00+00:00"),
                retrieval_pb2.ModelVersion(
                    version="v2", trained_at="2026-12-01T10:00:00+00:00", current=True
                ),
            ],
            served="v2",
        )


class Ranking(Failing):
    async def ListRankers(self, request: Any, timeout: float | None = None) -> Any:
        self._check("ListRankers")
        ltr = ranking_pb2.RankerInfo(
            name="ltr",
            trained=True,
            active=True,
            versions=[
                ranking_pb2.RankerVersion(version="l1", trained_at="2026-11-01T00:00:00Z"),
                ranking_pb2.RankerVersion(
                    version="l2", trained_at="2026-11-02T00:00:00Z", current=True
                ),
            ],
        )
        blend = ranking_pb2.RankerInfo(name="blend", origin="built-in")
        return ranking_pb2.ListRankersResponse(rankers=[blend, ltr], active="ltr@l1")


class Ingestion(FakeIngestion, Failing):
    def __init__(self) -> None:
        FakeIngestion.__init__(self)
        Failing.__init__(self)

    async def GetBusStatus(self, request: Any, timeout: float | None = None) -> Any:
        self._check("GetBusStatus")
        return ingestion_pb2.BusStatus(
            consumers=[
                ingestion_pb2.ConsumerLag(group="analytics", topic="recofleet.events", lag=12),
                ingestion_pb2.ConsumerLag(group="profiles", topic="recofleet.events", lag=0),
            ],
            dead_letters=3,
            location="local log /var/bus",
        )


class Composer:
    """Answers every recommendation request degraded or not, as told."""

    degraded = False

    async def recommend(self, member_id: str, placement: str, *args: Any) -> Recommendation:
        return Recommendation("r-1", member_id, placement, [], "popular", degraded=self.degraded)


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    running = Gateway(settings())
    clients = running.clients
    clients.ingestion = Ingestion()
    clients.profiles = Profiles()  # type: ignore[attr-defined]
    clients.retrieval = Retrieval()  # type: ignore[attr-defined]
    clients.ranking = Ranking()  # type: ignore[attr-defined]
    running.app.state.composer = Composer()
    async with running.http:
        yield running


async def test_the_overview_shows_what_each_owner_says(gateway: Gateway) -> None:
    reply = await gateway.http.get("/v1/overview")

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["members"] == 600 and body["dead_letters"] == 3
    assert body["models"] == [
        {
            "kind": "retrieval",
            "name": "retrieval",
            "version": "v1",
            "active": False,
            "trained_at": "2026-11-30T10:00:00Z",
        },
        {
            "kind": "retrieval",
            "name": "retrieval",
            "version": "v2",
            "active": True,
            "trained_at": "2026-12-01T10:00:00Z",
        },
        {"kind": "ranker", "name": "blend", "version": None, "active": False, "trained_at": None},
        # The version activated, not the ranker's newest.
        {
            "kind": "ranker",
            "name": "ltr",
            "version": "l1",
            "active": True,
            "trained_at": "2026-11-01T00:00:00Z",
        },
    ]
    assert body["consumers"] == [
        {"group": "analytics", "topic": "recofleet.events", "lag": 12},
        {"group": "profiles", "topic": "recofleet.events", "lag": 0},
    ]
    assert body["unavailable"] == [] and body["consumers_unknown"] is None
    assert {len(points) for points in body["series"].values()} == {60}


async def test_the_traffic_is_what_this_replica_accepted_and_served(gateway: Gateway) -> None:
    for _ in range(3):
        assert (await gateway.http.post("/v1/events", json=EVENT)).status_code == 202
    assert (await gateway.http.get("/v1/members/m-1/recommendations")).status_code == 200
    gateway.app.state.composer.degraded = True
    assert (await gateway.http.get("/v1/members/m-1/recommendations")).status_code == 200

    body = (await gateway.http.get("/v1/overview")).json()

    # The fake ingestion accepts one event per request.
    assert body["events_per_second"] == round(3 / 60, 3)
    assert body["recommendations_per_second"] == round(2 / 60, 3)
    assert body["degraded_last_hour"] == 1
    series = body["series"]
    assert sum(count for _, count in series["events"]) == 3
    assert sum(count for _, count in series["recommendations"]) == 2
    assert sum(count for _, count in series["degraded"]) == 1
    minutes = [minute for minute, _ in series["events"]]
    assert minutes == sorted(minutes) and minutes[-1].endswith(":00Z")
    assert body["gateway_replica"]


async def test_a_service_down_leaves_its_part_out_and_the_rest_in(gateway: Gateway) -> None:
    gateway.clients.profiles.failing["CountMembers"] = DOWN  # type: ignore[attr-defined]
    gateway.clients.ingestion.failing["GetBusStatus"] = rpc_error(  # type: ignore[attr-defined]
        grpc.StatusCode.DEADLINE_EXCEEDED, "slow"
    )

    reply = await gateway.http.get("/v1/overview")

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["unavailable"] == ["profiles", "ingestion"]
    assert body["members"] is None and body["dead_letters"] is None and body["consumers"] == []
    assert len(body["models"]) == 4


async def test_every_service_down_still_answers_the_gateways_own_figures(
    gateway: Gateway,
) -> None:
    clients = gateway.clients
    clients.profiles.failing["CountMembers"] = DOWN  # type: ignore[attr-defined]
    clients.retrieval.failing["ListModels"] = DOWN  # type: ignore[attr-defined]
    clients.ranking.failing["ListRankers"] = DOWN  # type: ignore[attr-defined]
    clients.ingestion.failing["GetBusStatus"] = DOWN  # type: ignore[attr-defined]

    body = (await gateway.http.get("/v1/overview")).json()

    assert body["unavailable"] == ["profiles", "retrieval", "ranking", "ingestion"]
    assert body["models"] == [] and body["events_per_second"] == 0.0


async def test_a_bus_that_cannot_list_its_groups_says_why(gateway: Gateway) -> None:
    async def unlisted(request: Any, timeout: float | None = None) -> Any:
        return ingestion_pb2.BusStatus(dead_letters=1, consumers_unknown="no ListGroups")

    gateway.clients.ingestion.GetBusStatus = unlisted  # type: ignore[attr-defined]

    body = (await gateway.http.get("/v1/overview")).json()

    assert body["consumers"] == [] and body["consumers_unknown"] == "no ListGroups"
    assert body["dead_letters"] == 1 and body["unavailable"] == []


async def test_the_overview_needs_an_admin_key(gateway: Gateway) -> None:
    _, shop = create_key(gateway.keys, ["events:write", "profiles:read"], "shop")

    refused = await gateway.http.get("/v1/overview", headers={"x-api-key": shop})

    assert refused.status_code == 403 and "'admin'" in refused.json()["detail"]


# --- the access key ----------------------------------------------------------------------


async def test_any_valid_key_learns_its_own_id_name_and_scopes(gateway: Gateway) -> None:
    made, key = create_key(gateway.keys, ["profiles:read", "events:write"], "console")

    reply = await gateway.http.get("/v1/access-key", headers={"authorization": f"Bearer {key}"})

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["key_id"], body["name"]) == (made.id, "console")
    assert body["scopes"] == body["allows"] == ["events:write", "profiles:read"]
    assert key not in reply.text and "digest" not in body


async def test_the_admin_key_of_the_environment_is_env_and_allows_every_scope(
    gateway: Gateway,
) -> None:
    body = (await gateway.http.get("/v1/access-key", headers={"x-api-key": ADMIN_KEY})).json()

    assert (body["key_id"], body["scopes"]) == ("env", ["admin"])
    assert "segments:write" in body["allows"] and "admin" in body["allows"]


@pytest.mark.parametrize("key", ["", "rf_000000000000_not-a-key-at-all-really"])
async def test_without_a_valid_key_the_access_key_is_401(gateway: Gateway, key: str) -> None:
    reply = await gateway.http.get("/v1/access-key", headers={"x-api-key": key})

    assert reply.status_code == 401, reply.text
    assert reply.headers["www-authenticate"].startswith("Bearer")
