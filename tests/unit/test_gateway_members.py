"""The gateway's member portrait and manual tag routes, in process, over a fake profiles stub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.gateway.compose import COMPOSED, Composer
from services.gen.recofleet.profiles.v1 import profiles_pb2
from tests.unit.test_gateway_http import ADMIN_KEY, app_with, assert_error, rpc_error, settings

AT = datetime(2026, 5, 1, 12, tzinfo=UTC)


def ts(value: datetime = AT) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


class FakeProfiles:
    """Knows member m-1; answers tags with what it was asked, or raises what it is told."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.calls: list[tuple[str, str, str]] = []
        self.personalized = True
        self.views: list[int] = []

    async def GetProfile(
        self, request: profiles_pb2.GetProfileRequest, timeout: float | None = None
    ) -> profiles_pb2.GetProfileResponse:
        self.views.append(request.view)
        if self.error is not None:
            raise self.error
        if request.member_id != "m-1":
            return profiles_pb2.GetProfileResponse(
                profile=profiles_pb2.Profile(member_id=request.member_id, known=False)
            )
        return profiles_pb2.GetProfileResponse(
            profile=profiles_pb2.Profile(
                member_id="m-1",
                known=True,
                first_seen=ts(),
                last_seen=ts(),
                first_order_at=ts(),
                last_order_at=ts(),
                events=3,
                rfm=profiles_pb2.Rfm(
                    recency_days=0.5, frequency=2, monetary=42.5, r_score=5, f_score=3, m_score=4
                ),
                lifecycle="new",
                affinities=[
                    profiles_pb2.CategoryAffinity(
                        category="kitchen", share=0.75, weight=3.0, last_purchase_at=ts()
                    ),
                    profiles_pb2.CategoryAffinity(category="garden", share=0.25, weight=1.0),
                ],
                price=profiles_pb2.PriceProfile(
                    band="low",
                    percentile=0.2,
                    typical_price=4.25,
                    sensitivity=0.5,
                    discounted_orders=1,
                ),
                preferred_channel="email",
                tags=[
                    profiles_pb2.Tag(tag="vip", source="rule"),
                    profiles_pb2.Tag(tag="vip", source="manual", set_at=ts()),
                ],
                as_of=ts(),
                consent=profiles_pb2.Consent(personalization=self.personalized),
                segments=["new", "kitchen-lovers"] if self.personalized else [],
            )
        )

    async def _tag(self, kind: str, request: profiles_pb2.ManualTagRequest) -> Any:
        self.calls.append((kind, request.member_id, request.tag))
        if self.error is not None:
            raise self.error
        tags = (
            []
            if kind == "remove"
            else [profiles_pb2.Tag(tag=request.tag, source="manual", set_at=ts())]
        )
        return profiles_pb2.ManualTagsResponse(member_id=request.member_id, tags=tags)

    async def SetManualTag(
        self, request: profiles_pb2.ManualTagRequest, timeout: float | None = None
    ) -> profiles_pb2.ManualTagsResponse:
        return await self._tag("set", request)

    async def RemoveManualTag(
        self, request: profiles_pb2.ManualTagRequest, timeout: float | None = None
    ) -> profiles_pb2.ManualTagsResponse:
        return await self._tag("remove", request)


class Clients:
    def __init__(self) -> None:
        self.profiles = FakeProfiles()


async def never_back(timeout_s: float) -> bool:
    return False


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[httpx.AsyncClient, FakeProfiles]]:
    gateway_settings = settings()
    clients = Clients()
    app = app_with(gateway_settings, clients)  # type: ignore[arg-type]
    probes = {service: never_back for service in COMPOSED}  # no breaker opens here
    app.state.composer = Composer(clients, gateway_settings, probes)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway", headers={"x-api-key": ADMIN_KEY}
    ) as http:
        yield http, clients.profiles


async def test_the_profile_shows_the_portrait(gateway) -> None:
    http, _ = gateway

    body = (await http.get("/v1/members/m-1/profile")).json()

    assert body["rfm"] == {
        "recency_days": 0.5,
        "frequency": 2,
        "monetary": 42.5,
        "r_score": 5,
        "f_score": 3,
        "m_score": 4,
    }
    assert body["lifecycle"] == "new"
    assert body["affinities"] == [
        {
            "category": "kitchen",
            "share": 0.75,
            "weight": 3.0,
            "last_purchase_at": "2026-05-01T12:00:00Z",
        },
        {"category": "garden", "share": 0.25, "weight": 1.0, "last_purchase_at": None},
    ]
    assert body["price"] == {
        "band": "low",
        "percentile": 0.2,
        "typical_price": 4.25,
        "sensitivity": 0.5,
        "discounted_orders": 1,
    }
    assert body["preferred_channel"] == "email"
    assert body["tags"] == [
        {"tag": "vip", "source": "rule", "set_at": None},
        {"tag": "vip", "source": "manual", "set_at": "2026-05-01T12:00:00Z"},
    ]
    assert body["first_order_at"] == body["as_of"] == "2026-05-01T12:00:00Z"


async def test_manual_tags_are_set_and_removed_through_profiles(gateway) -> None:
    http, profiles = gateway

    put = await http.put("/v1/members/m-1/tags/vip")
    removed = await http.delete("/v1/members/m-1/tags/vip")

    assert put.status_code == 200, put.text
    assert put.json() == {
        "member_id": "m-1",
        "manual_tags": [{"tag": "vip", "source": "manual", "set_at": "2026-05-01T12:00:00Z"}],
    }
    assert removed.json() == {"member_id": "m-1", "manual_tags": []}
    assert profiles.calls == [("set", "m-1", "vip"), ("remove", "m-1", "vip")]


@pytest.mark.parametrize("tag", ["VIP", "-vip", "v" * 65, "a b", "vip!"])
async def test_a_tag_name_that_is_not_one_is_refused_before_profiles(gateway, tag: str) -> None:
    http, profiles = gateway

    assert_error(await http.put(f"/v1/members/m-1/tags/{tag}"), 422, "tag")
    assert profiles.calls == []


@pytest.mark.parametrize(
    ("code", "status", "detail"),
    [
        (grpc.StatusCode.NOT_FOUND, 404, "no events seen"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 409, "most allowed"),
        (grpc.StatusCode.INVALID_ARGUMENT, 422, "tag:"),
        (grpc.StatusCode.UNAVAILABLE, 503, "retry"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503, "retry"),
    ],
)
async def test_what_profiles_says_becomes_an_http_status(
    gateway, code: grpc.StatusCode, status: int, detail: str
) -> None:
    http, profiles = gateway
    profiles.error = rpc_error(
        code,
        {404: "no events seen for member 'x'", 409: "the most allowed", 422: "tag: no"}.get(
            status, "down"
        ),
    )

    for method in ("PUT", "DELETE"):
        reply = await http.request(method, "/v1/members/x/tags/vip")
        assert_error(reply, status, detail)
        if status == 503:
            assert reply.headers["retry-after"] == "1"


async def test_another_method_on_a_tag_says_both_that_are_served(gateway) -> None:
    http, profiles = gateway

    for method in ("GET", "POST", "OPTIONS", "PATCH"):
        reply = await http.request(method, "/v1/members/m-1/tags/vip")
        assert_error(reply, 405, "Method Not Allowed")
        assert reply.headers["allow"] == "DELETE, PUT"
    assert profiles.calls == []


async def test_the_members_segments_come_from_the_smaller_view_of_the_portrait(gateway) -> None:
    http, profiles = gateway

    reply = await http.get("/v1/members/m-1/segments")

    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "member_id": "m-1",
        "segments": ["new", "kitchen-lovers"],
        "lifecycle": "new",
        "personalized": True,
    }
    assert profiles.views == [profiles_pb2.PROFILE_VIEW_BASIC]


async def test_a_member_without_personalization_consent_is_in_no_segment(gateway) -> None:
    http, profiles = gateway
    profiles.personalized = False

    body = (await http.get("/v1/members/m-1/segments")).json()

    assert (body["segments"], body["lifecycle"], body["personalized"]) == ([], "new", False)


async def test_the_segments_of_a_member_never_seen_are_404_and_profiles_down_503(gateway) -> None:
    http, profiles = gateway

    assert_error(await http.get("/v1/members/ghost/segments"), 404, "no events seen", "ghost")
    profiles.error = rpc_error(grpc.StatusCode.UNAVAILABLE)
    down = await http.get("/v1/members/m-1/segments")
    assert_error(down, 503, "profiles unavailable")
    assert down.headers["retry-after"] == "1"
