"""The profiles service's gRPC face over a real store: portraits, scores on demand, tags."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from services.common.clock import Clock
from services.common.events import Event
from services.gen.recofleet.profiles.v1 import profiles_pb2
from services.profiles.portrait import Portraitist
from services.profiles.segmenting import Segmenter
from services.profiles.servicer import ProfilesServicer
from services.profiles.settings import ProfilesSettings
from services.profiles.store import SqlProfileStore

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ProfilesServicer]:
    settings = ProfilesSettings(max_manual_tags=1)
    store = SqlProfileStore.from_url(f"sqlite:///{tmp_path / 'p.db'}", settings)
    store.apply_events(
        [
            Event(
                type="purchase",
                member_id=f"m-{n}",
                order_id=f"o-{n}-{k}",
                revenue=10.0 * n,
                items=[{"item_id": "pan", "category": "kitchen", "price": 10.0}],
                timestamp=NOW - timedelta(days=n + 30 * k),
                context={"channel": "app"},
            )
            for n in range(1, 11)
            for k in range(n)
        ]
    )
    portraitist, clock = Portraitist(settings), Clock.fixed(NOW)
    segmenter = Segmenter(store, portraitist, clock, sizes_ttl_s=0)
    yield ProfilesServicer(store, 20, portraitist, clock, segmenter)
    store.close()


async def test_scores_are_recomputed_on_demand_and_shown_in_profiles(service) -> None:
    before = await service.GetProfile(profiles_pb2.GetProfileRequest(member_id="m-10"), Context())
    assert not before.profile.rfm.HasField("m_score")

    computed = await service.RecomputeScores(profiles_pb2.RecomputeScoresRequest(), Context())
    after = (
        await service.GetProfile(profiles_pb2.GetProfileRequest(member_id="m-10"), Context())
    ).profile

    assert computed.scoring.population == 10
    assert list(computed.scoring.frequency) == [2, 4, 6, 8]
    assert computed.scoring.priced_categories == ["kitchen"]
    assert (after.rfm.r_score, after.rfm.f_score, after.rfm.m_score) == (1, 5, 5)
    assert after.lifecycle == "high-value"
    assert after.preferred_channel == "app"
    assert after.affinities[0].category == "kitchen"
    assert after.as_of.ToDatetime(tzinfo=UTC) == NOW
    assert [(t.tag, t.source) for t in after.tags] == [("vip", "rule")]


async def test_manual_tags_through_grpc(service) -> None:
    tag = profiles_pb2.ManualTagRequest(member_id="m-1", tag="press")

    set_reply = await service.SetManualTag(tag, Context())
    profile = (
        await service.GetProfile(profiles_pb2.GetProfileRequest(member_id="m-1"), Context())
    ).profile
    removed = await service.RemoveManualTag(tag, Context())

    assert [(t.tag, t.source) for t in set_reply.tags] == [("press", "manual")]
    assert set_reply.tags[0].set_at.ToDatetime(tzinfo=UTC) == NOW
    assert ("press", "manual") in [(t.tag, t.source) for t in profile.tags]
    assert list(removed.tags) == []


@pytest.mark.parametrize(
    ("member_id", "tag", "code"),
    [
        ("m-404", "press", grpc.StatusCode.NOT_FOUND),
        ("m-1", "Press", grpc.StatusCode.INVALID_ARGUMENT),
        ("", "press", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_tag_requests_that_cannot_be_done_are_refused(
    service, member_id: str, tag: str, code: grpc.StatusCode
) -> None:
    request = profiles_pb2.ManualTagRequest(member_id=member_id, tag=tag)
    for call in (service.SetManualTag, service.RemoveManualTag):
        with pytest.raises(Aborted) as refused:
            await call(request, Context())
        assert refused.value.code == code


async def test_past_the_manual_tag_limit_is_resource_exhausted(service) -> None:
    await service.SetManualTag(profiles_pb2.ManualTagRequest(member_id="m-1", tag="a"), Context())

    with pytest.raises(Aborted) as refused:
        await service.SetManualTag(
            profiles_pb2.ManualTagRequest(member_id="m-1", tag="b"), Context()
        )
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def scored(service: ProfilesServicer) -> None:
    await service.RecomputeScores(profiles_pb2.RecomputeScoresRequest(), Context())


async def test_lifecycle_segments_are_listed_with_their_sizes(service) -> None:
    await scored(service)
    reply = await service.ListSegments(profiles_pb2.ListSegmentsRequest(), Context())

    sizes = {s.name: s.size for s in reply.segments}
    assert reply.members == 10
    assert set(sizes) == {"new", "active", "high-value", "loyal", "at-risk", "churned", "prospect"}
    assert sum(sizes.values()) == 10  # every member is in exactly one lifecycle segment
    assert all(s.kind == "lifecycle" for s in reply.segments)


async def test_a_defined_segment_is_sized_at_once_and_paged(service) -> None:
    await scored(service)
    put = await service.PutSegment(
        profiles_pb2.PutSegmentRequest(
            name="kitchen-spenders", condition="affinity.kitchen > 0.5 and monetary >= 200"
        ),
        Context(),
    )
    # m-n spent 10·n per order over n orders: 10n² >= 200 for n >= 5.
    assert put.segment.size == 6 and put.segment.kind == "custom"

    first = await service.SegmentMembers(
        profiles_pb2.SegmentMembersRequest(name="kitchen-spenders", limit=4), Context()
    )
    rest = await service.SegmentMembers(
        profiles_pb2.SegmentMembersRequest(
            name="kitchen-spenders", limit=4, after=first.next_after
        ),
        Context(),
    )
    ids = [m.member_id for m in [*first.members, *rest.members]]
    assert ids == sorted(f"m-{n}" for n in range(5, 11))
    assert first.next_after == ids[3] == "m-7" and rest.next_after == ""  # by id, as text
    assert first.members[0].top_category == "kitchen"

    profile = await service.GetProfile(profiles_pb2.GetProfileRequest(member_id="m-9"), Context())
    assert "kitchen-spenders" in profile.profile.segments


async def test_a_bad_definition_names_the_field(service) -> None:
    with pytest.raises(Aborted) as bad:
        await service.PutSegment(
            profiles_pb2.PutSegmentRequest(name="x", condition="spend > 3"), Context()
        )
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(bad.value).startswith("INVALID_ARGUMENT: condition: unknown field 'spend'")
    with pytest.raises(Aborted) as builtin:
        await service.PutSegment(
            profiles_pb2.PutSegmentRequest(name="churned", condition="frequency > 1"), Context()
        )
    assert builtin.value.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_withdrawn_consent_takes_a_member_out_of_every_segment_and_channel(service) -> None:
    await scored(service)
    await service.PutSegment(
        profiles_pb2.PutSegmentRequest(name="all-buyers", condition="frequency >= 1"), Context()
    )
    await service.SetConsent(
        profiles_pb2.SetConsentRequest(member_id="m-3", changes={"personalization": False}),
        Context(),
    )
    await service.SetConsent(
        profiles_pb2.SetConsentRequest(member_id="m-4", changes={"email": True}), Context()
    )

    everyone = await service.SegmentMembers(
        profiles_pb2.SegmentMembersRequest(name="all-buyers", limit=100), Context()
    )
    by_email = await service.SegmentMembers(
        profiles_pb2.SegmentMembersRequest(name="all-buyers", channel="email"), Context()
    )
    profile = await service.GetProfile(profiles_pb2.GetProfileRequest(member_id="m-3"), Context())

    assert "m-3" not in [m.member_id for m in everyone.members]
    assert len(everyone.members) == 9
    assert [m.member_id for m in by_email.members] == ["m-4"]
    assert not profile.profile.consent.personalization and list(profile.profile.segments) == []


async def test_consent_of_an_unknown_member_is_kept_and_shown(service) -> None:
    reply = await service.SetConsent(
        profiles_pb2.SetConsentRequest(member_id="visitor-1", changes={"sms": True}), Context()
    )
    assert reply.consent.sms and reply.consent.personalization and not reply.consent.email
    profile = await service.GetProfile(
        profiles_pb2.GetProfileRequest(member_id="visitor-1"), Context()
    )
    assert not profile.profile.known and profile.profile.consent.sms
    with pytest.raises(Aborted) as bad:
        await service.SetConsent(
            profiles_pb2.SetConsentRequest(member_id="m-1", changes={"fax": True}), Context()
        )
    assert "unknown consent fax" in str(bad.value)


async def test_an_export_streams_every_member_in_pages(service) -> None:
    await service.PutSegment(
        profiles_pb2.PutSegmentRequest(name="all-buyers", condition="frequency >= 1"), Context()
    )
    streamed = [
        m.member_id
        async for page in service.ExportSegment(
            profiles_pb2.SegmentMembersRequest(name="all-buyers"), Context()
        )
        for m in page.members
    ]
    assert streamed == sorted(f"m-{n}" for n in range(1, 11))
    with pytest.raises(Aborted) as missing:
        async for _ in service.ExportSegment(
            profiles_pb2.SegmentMembersRequest(name="nope"), Context()
        ):
            pass
    assert missing.value.code == grpc.StatusCode.NOT_FOUND


async def test_the_basic_view_carries_what_a_recommendation_needs_and_no_item_lists(
    service,
) -> None:
    full = await service.GetProfile(profiles_pb2.GetProfileRequest(member_id="m-4"), Context())
    basic = await service.GetProfile(
        profiles_pb2.GetProfileRequest(member_id="m-4", view=profiles_pb2.PROFILE_VIEW_BASIC),
        Context(),
    )

    assert list(full.profile.purchased_item_ids) == ["pan"] and full.profile.recent_items
    assert list(basic.profile.purchased_item_ids) == [] and not basic.profile.recent_items
    for kept in ("rfm", "categories", "consent", "segments", "lifecycle"):
        assert getattr(basic.profile, kept) == getattr(full.profile, kept), kept


async def test_members_are_counted_with_the_fleet_clock(service) -> None:
    counted = await service.CountMembers(profiles_pb2.CountMembersRequest(), Context())

    assert counted.members == 10
    assert counted.as_of.ToDatetime(tzinfo=UTC) == NOW


async def test_discovered_segments_can_be_saved_as_they_come(service) -> None:
    found = await service.DiscoverSegments(profiles_pb2.DiscoverSegmentsRequest(k=2), Context())

    assert (found.k, found.members, found.clustered) == (2, 10, 10)
    assert len(found.segments) == 2 and sum(s.size for s in found.segments) == 10
    for suggestion in found.segments:
        saved = await service.PutSegment(
            profiles_pb2.PutSegmentRequest(
                name=suggestion.name,
                condition=suggestion.condition,
                description=suggestion.description,
            ),
            Context(),
        )
        assert saved.segment.size >= 1
        assert suggestion.summary and suggestion.summary in suggestion.description


async def test_a_discovery_window_keeps_to_recent_buyers_and_says_so(service) -> None:
    found = await service.DiscoverSegments(
        profiles_pb2.DiscoverSegmentsRequest(k=2, window_days=5), Context()
    )

    # m-1 .. m-5 ordered within the last five days.
    assert (found.members, found.clustered) == (5, 5)
    assert all(s.condition.endswith("and recency_days <= 5") for s in found.segments)
    for suggestion in found.segments:
        saved = await service.PutSegment(
            profiles_pb2.PutSegmentRequest(name=suggestion.name, condition=suggestion.condition),
            Context(),
        )
        assert 1 <= saved.segment.size <= 5


@pytest.mark.parametrize(
    ("request_", "code", "says"),
    [
        (profiles_pb2.DiscoverSegmentsRequest(k=11), "FAILED_PRECONDITION", "fewer than k=11"),
        (profiles_pb2.DiscoverSegmentsRequest(k=30), "INVALID_ARGUMENT", "k is 2 to 20"),
        (
            profiles_pb2.DiscoverSegmentsRequest(k=2, window_days=-1),
            "INVALID_ARGUMENT",
            "window_days",
        ),
    ],
)
async def test_a_discovery_that_cannot_be_done_is_refused(
    service, request_: profiles_pb2.DiscoverSegmentsRequest, code: str, says: str
) -> None:
    with pytest.raises(Aborted) as refused:
        await service.DiscoverSegments(request_, Context())

    assert refused.value.code == grpc.StatusCode[code]
    assert says in str(refused.value)


async def test_each_day_a_segment_is_counted_on_is_a_point_of_its_trend(tmp_path: Path) -> None:
    settings = ProfilesSettings()
    store = SqlProfileStore.from_url(f"sqlite:///{tmp_path / 'trend.db'}", settings)
    clock = Clock.fixed(NOW)
    segmenter = Segmenter(store, Portraitist(settings), clock, sizes_ttl_s=0, trend_days=3)
    service = ProfilesServicer(store, 20, Portraitist(settings), clock, segmenter)
    bought = {"item_id": "pan", "category": "kitchen", "price": 10.0}
    try:
        for day, member in enumerate(("m-1", "m-2", "m-3", "m-4")):
            clock.offset = timedelta(days=day)
            store.apply_events(
                [
                    Event(
                        type="purchase",
                        member_id=member,
                        order_id=f"o-{member}",
                        revenue=10.0,
                        items=[bought],
                        timestamp=clock.now(),
                    )
                ]
            )
            await service.ListSegments(profiles_pb2.ListSegmentsRequest(), Context())
        reply = await service.ListSegments(profiles_pb2.ListSegmentsRequest(), Context())
    finally:
        store.close()

    trend = {s.name: [(p.day, p.size) for p in s.trend] for s in reply.segments}
    # Three days kept; each member is new on the day of their first purchase.
    assert [day for day, _ in trend["new"]] == ["2026-05-02", "2026-05-03", "2026-05-04"]
    assert [size for _, size in trend["new"]] == [2, 3, 4]
