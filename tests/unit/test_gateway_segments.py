"""The gateway's segment, consent and erasure routes, in process, over fake services."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from services.gen.recofleet.ingestion.v1 import ingestion_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2
from tests.unit.test_gateway_http import ADMIN_KEY, app_with, assert_error, rpc_error, settings
from tests.unit.test_gateway_members import ts

MEMBERS = [
    profiles_pb2.SegmentMember(
        member_id=member_id,
        lifecycle="active",
        frequency=3,
        monetary=120.5,
        r_score=4,
        top_category="garden",
        tags=["vip", "win-back"],
        consent=profiles_pb2.Consent(personalization=True, email=True),
    )
    for member_id in ("m-1", '=HYPERLINK("http://x")', "m-3")
]


class FakeProfiles:
    def __init__(self) -> None:
        self.put: list[profiles_pb2.PutSegmentRequest] = []
        self.discover: list[profiles_pb2.DiscoverSegmentsRequest] = []
        self.consent: list[profiles_pb2.SetConsentRequest] = []
        self.counted: list[profiles_pb2.Audience] = []

    async def CountAudience(self, request: Any, timeout: float | None = None) -> Any:
        self.counted.append(request)
        if "spend" in request.condition:
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "condition: unknown field 'spend'")
        return profiles_pb2.AudienceCount(members=9, by_channel={"email": 4, "sms": 0}, as_of=ts())

    async def PutSegment(self, request: Any, timeout: float | None = None) -> Any:
        self.put.append(request)
        if "spend" in request.condition:
            raise rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "condition: unknown field 'spend'")
        if request.name == "churned":
            raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "'churned' is a lifecycle segment")
        return profiles_pb2.SegmentResponse(
            segment=profiles_pb2.Segment(
                name=request.name, condition=request.condition, kind="custom", size=42
            ),
            as_of=ts(),
        )

    async def DiscoverSegments(self, request: Any, timeout: float | None = None) -> Any:
        self.discover.append(request)
        if request.k > 6:
            raise rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "6 members who ordered: fewer")
        window = " and recency_days <= 90" if request.HasField("window_days") else ""
        return profiles_pb2.DiscoverSegmentsResponse(
            segments=[
                profiles_pb2.DiscoveredSegment(
                    name=f"cluster-{n}",
                    condition=f"f_score >= {n}{window}",
                    description=f"frequent {n}. Discovered by k-means (k={request.k})",
                    size=7 - n,
                    share=(7 - n) / 13,
                    precision=0.8,
                    recall=0.9,
                    matched=7 - n,
                    summary=f"frequent {n}",
                )
                for n in range(1, request.k + 1)
            ],
            k=request.k,
            features=["r_score", "f_score", "m_score", "affinity.kitchen"],
            members=14,
            clustered=13,
            without_order=1,
            as_of=ts(),
        )

    async def ListSegments(self, request: Any, timeout: float | None = None) -> Any:
        return profiles_pb2.ListSegmentsResponse(
            segments=[
                profiles_pb2.Segment(
                    name="new",
                    kind="lifecycle",
                    size=7,
                    trend=[
                        profiles_pb2.DailySize(day="2026-12-01", size=5),
                        profiles_pb2.DailySize(day="2026-12-03", size=7),
                    ],
                )
            ],
            as_of=ts(),
            members=7,
        )

    def ExportSegment(self, request: Any, timeout: float | None = None) -> Any:
        async def pages() -> AsyncIterator[profiles_pb2.SegmentMembersResponse]:
            if request.name == "nope":
                raise rpc_error(grpc.StatusCode.NOT_FOUND, "no segment named 'nope'")
            yield profiles_pb2.SegmentMembersResponse(members=MEMBERS[:2])
            yield profiles_pb2.SegmentMembersResponse(members=MEMBERS[2:])

        return pages()

    async def SetConsent(self, request: Any, timeout: float | None = None) -> Any:
        self.consent.append(request)
        return profiles_pb2.SetConsentResponse(
            member_id=request.member_id,
            consent=profiles_pb2.Consent(
                personalization=request.changes.get("personalization", True)
            ),
        )


class FakeIngestion:
    def __init__(self) -> None:
        self.erased: list[str] = []

    async def EraseMember(self, request: Any, timeout: float | None = None) -> Any:
        self.erased.append(request.member_id)
        return ingestion_pb2.EraseMemberResponse(erasure_id="e-1", requested_at=ts())


class Clients:
    def __init__(self) -> None:
        self.profiles = FakeProfiles()
        self.ingestion = FakeIngestion()


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[httpx.AsyncClient, Clients]]:
    clients = Clients()
    app = app_with(settings(), clients)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"x-api-key": ADMIN_KEY},
    ) as http:
        yield http, clients


async def test_listing_shows_sizes(gateway) -> None:
    http, _ = gateway
    body = (await http.get("/v1/segments")).json()
    assert body["members"] == 7
    assert body["segments"][0] | {"created_at": None} == {
        "name": "new",
        "condition": "",
        "description": "",
        "kind": "lifecycle",
        "size": 7,
        "created_at": None,
        "updated_at": None,
        "trend": [{"day": "2026-12-01", "size": 5}, {"day": "2026-12-03", "size": 7}],
    }


async def test_a_condition_is_counted_without_saving_a_segment(gateway) -> None:
    http, clients = gateway
    reply = await http.post("/v1/segments/count", json={"condition": "m_score >= 4"})
    assert reply.status_code == 200, reply.text
    assert reply.json() | {"as_of": None} == {
        "members": 9,
        "by_channel": {"email": 4, "sms": 0},
        "as_of": None,
    }
    assert [c.condition for c in clients.profiles.counted] == ["m_score >= 4"]
    assert not clients.profiles.put
    assert_error(
        await http.post("/v1/segments/count", json={"condition": "spend > 3"}),
        422,
        "condition: unknown field 'spend'",
    )
    assert_error(await http.post("/v1/segments/count", json={"condition": ""}), 422, "condition")
    assert_error(
        await http.post("/v1/segments/count", json={"condition": "x > 1", "name": "y"}),
        422,
        "name:",
    )


async def test_a_new_segment_answers_201_with_its_size(gateway) -> None:
    http, clients = gateway
    reply = await http.post(
        "/v1/segments", json={"name": "garden-fans", "condition": "affinity.garden > 0.5"}
    )
    assert reply.status_code == 201, reply.text
    assert reply.json()["size"] == 42
    assert clients.profiles.put[0].create_only


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"name": "x", "condition": "spend > 3"}, 422, "condition: unknown field 'spend'"),
        ({"name": "Bad Name", "condition": "frequency > 1"}, 422, "name:"),
        ({"name": "x"}, 422, "condition: Field required"),
        ({"name": "x", "condition": "frequency > 1", "owner": "me"}, 422, "owner:"),
        ({"name": "x", "condition": 5}, 422, "condition:"),
        ({"name": "churned", "condition": "frequency > 1"}, 409, "lifecycle"),
    ],
)
async def test_a_bad_definition_is_refused_naming_the_field(
    gateway, body, status, fragment
) -> None:
    http, _ = gateway
    assert_error(await http.post("/v1/segments", json=body), status, fragment)


async def test_a_body_that_is_not_json_is_a_400(gateway) -> None:
    http, _ = gateway
    reply = await http.put(
        "/v1/segments/x",
        content=b'{"condition": NaN}',
        headers={"content-type": "application/json"},
    )
    assert_error(reply, 400)
    deep = b"[" * 5000 + b"]" * 5000
    assert_error(await http.post("/v1/segments", content=deep), 400)


async def test_csv_export_streams_every_page_with_formulas_defused(gateway) -> None:
    http, _ = gateway
    reply = await http.get("/v1/segments/garden-fans/export")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/csv")
    assert 'filename="garden-fans.csv"' in reply.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert [r["member_id"] for r in rows] == ["m-1", '\'=HYPERLINK("http://x")', "m-3"]
    assert rows[0]["tags"] == "vip;win-back" and rows[0]["r_score"] == "4"
    assert rows[0]["f_score"] == ""


async def test_jsonl_export_is_one_member_per_line(gateway) -> None:
    http, _ = gateway
    reply = await http.get("/v1/segments/garden-fans/export", params={"format": "jsonl"})
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert [line["member_id"] for line in lines] == [m.member_id for m in MEMBERS]
    assert lines[0]["consent"]["email"] is True


async def test_exporting_an_unknown_segment_is_a_404_not_a_cut_stream(gateway) -> None:
    http, _ = gateway
    assert_error(await http.get("/v1/segments/nope/export"), 404, "no segment named")
    assert_error(await http.get("/v1/segments/x/export", params={"channel": "fax"}), 422)


async def test_consent_changes_only_the_keys_sent(gateway) -> None:
    http, clients = gateway
    reply = await http.put("/v1/members/m-1/consent", json={"personalization": False})
    assert reply.status_code == 200, reply.text
    assert reply.json()["consent"]["personalization"] is False
    assert dict(clients.profiles.consent[0].changes) == {"personalization": False}

    assert_error(await http.put("/v1/members/m-1/consent", json={}), 422, "give one or more")
    assert_error(await http.put("/v1/members/m-1/consent", json={"email": "yes"}), 422, "email")
    assert_error(await http.put("/v1/members/m-1/consent", json={"fax": True}), 422, "fax")


async def test_erasure_is_accepted_at_once(gateway) -> None:
    http, clients = gateway
    reply = await http.delete("/v1/members/m-1")
    assert reply.status_code == 202, reply.text
    assert reply.json()["erasure_id"] == "e-1" and clients.ingestion.erased == ["m-1"]


async def test_a_member_known_by_email_is_reached_by_their_token_never_the_address(
    gateway,
) -> None:
    http, clients = gateway
    reply = await http.put("/v1/members/Jane@Example.com/consent", json={"email": False})
    assert reply.status_code == 200, reply.text
    stored = clients.profiles.consent[0].member_id
    assert stored.startswith("pii:") and "example" not in stored.lower()
    await http.delete("/v1/members/jane@example.com")
    assert clients.ingestion.erased == [stored]  # the same person, however it is spelled


async def test_discovered_segments_are_saved_with_a_plain_put_of_their_conditions(
    gateway,
) -> None:
    http, clients = gateway

    reply = await http.post("/v1/segments/discover", json={"clusters": 2})

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [c["name"] for c in body["clusters"]] == ["cluster-1", "cluster-2"]
    first = body["clusters"][0]
    assert (first["size"], first["description"], first["precision"]) == (6, "frequent 1", 0.8)
    assert first["conditions"] == {
        "condition": "f_score >= 1",
        "description": "frequent 1. Discovered by k-means (k=2)",
    }
    assert (body["members"], body["clustered"]) == (14, 13)
    assert not clients.profiles.discover[0].HasField("window_days")

    saved = await http.put(f"/v1/segments/{first['name']}", json=first["conditions"])

    assert saved.status_code == 200, saved.text
    assert clients.profiles.put[0].condition == "f_score >= 1"
    assert clients.profiles.put[0].description == first["conditions"]["description"]


async def test_discovery_without_a_body_makes_five_and_a_window_goes_to_profiles(
    gateway,
) -> None:
    http, clients = gateway

    defaults = await http.post("/v1/segments/discover")
    windowed = await http.post("/v1/segments/discover", json={"clusters": 3, "window_days": 90})

    assert defaults.status_code == 200 and len(defaults.json()["clusters"]) == 5
    assert windowed.status_code == 200, windowed.text
    assert clients.profiles.discover[1].window_days == 90
    assert all(
        c["conditions"]["condition"].endswith("recency_days <= 90")
        for c in windowed.json()["clusters"]
    )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"clusters": 1}, "clusters: Input should be greater than or equal to 2"),
        ({"clusters": 13}, "clusters: Input should be less than or equal to 12"),
        ({"clusters": "5"}, "clusters: Input should be a valid integer"),
        ({"window_days": 0}, "window_days: Input should be greater than 0"),
        ({"k": 5}, "k: Extra inputs are not permitted"),
    ],
)
async def test_discovery_out_of_range_is_422_naming_the_field(gateway, body, detail) -> None:
    http, clients = gateway

    assert_error(await http.post("/v1/segments/discover", json=body), 422, detail)
    assert clients.profiles.discover == []


async def test_fewer_members_than_clusters_is_409(gateway) -> None:
    http, _ = gateway

    assert_error(await http.post("/v1/segments/discover", json={"clusters": 7}), 409, "fewer")
