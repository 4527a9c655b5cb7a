"""Campaign audiences through the profiles service's gRPC face, over a real store.

Members m-1..m-10 (m-n placed n orders of 10·n, the latest n days ago) are, once scored:
m-1 new, m-2..m-6 active, m-7 and m-8 loyal, m-9 and m-10 high-value (M score 5, rule tag
`vip`); v-1 only looked, two months ago (prospect).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
BUYERS = [f"m-{n}" for n in range(1, 11)]
EVERYONE = sorted([*BUYERS, "v-1"])
LIFECYCLES = ("new", "active", "high-value", "loyal", "at-risk", "churned", "prospect")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


def purchases() -> list[Event]:
    return [
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


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ProfilesServicer]:
    settings = ProfilesSettings()
    store = SqlProfileStore.from_url(f"sqlite:///{tmp_path / 'p.db'}", settings)
    look = Event(type="view", member_id="v-1", item_id="pan", timestamp=NOW - timedelta(days=60))
    store.apply_events([*purchases(), look])
    portraitist, clock = Portraitist(settings), Clock.fixed(NOW)
    servicer = ProfilesServicer(
        store, 20, portraitist, clock, Segmenter(store, portraitist, clock, sizes_ttl_s=0)
    )
    await servicer.RecomputeScores(profiles_pb2.RecomputeScoresRequest(), Context())
    yield servicer
    store.close()


def audience(*segments: str, condition: str = "") -> profiles_pb2.Audience:
    return profiles_pb2.Audience(segments=segments, condition=condition)


async def count(service: ProfilesServicer, wanted: profiles_pb2.Audience) -> int:
    return (await service.CountAudience(wanted, Context())).members


async def member_ids(
    service: ProfilesServicer, wanted: profiles_pb2.Audience, channel: str = "", limit: int = 0
) -> list[str]:
    """Every member of the audience, page after page."""
    found: list[str] = []
    after = ""
    while True:
        page = await service.AudienceMembers(
            profiles_pb2.AudienceMembersRequest(
                audience=wanted, channel=channel, after=after, limit=limit
            ),
            Context(),
        )
        found += [m.member_id for m in page.members]
        if not page.next_after:
            return found
        after = page.next_after


async def consent(service: ProfilesServicer, member_id: str, **changes: bool) -> None:
    await service.SetConsent(
        profiles_pb2.SetConsentRequest(member_id=member_id, changes=changes), Context()
    )


async def put_segment(service: ProfilesServicer, name: str, condition: str) -> None:
    await service.PutSegment(
        profiles_pb2.PutSegmentRequest(name=name, condition=condition), Context()
    )


async def test_an_audience_of_one_segment_holds_what_the_segment_holds(service) -> None:
    await put_segment(service, "big-spenders", "monetary >= 490")
    listed = await service.ListSegments(profiles_pb2.ListSegmentsRequest(), Context())
    sizes = {s.name: s.size for s in listed.segments}

    counted = {name: await count(service, audience(name)) for name in sizes}
    reply = await service.CountAudience(audience("active"), Context())

    assert counted == sizes
    assert counted["active"] == 5 and counted["big-spenders"] == 4 and counted["prospect"] == 1
    assert reply.as_of.ToDatetime(tzinfo=UTC) == NOW


async def test_an_audience_of_two_segments_is_their_union(service) -> None:
    await put_segment(service, "big-spenders", "monetary >= 490")  # m-7..m-10

    assert await member_ids(service, audience("loyal", "high-value")) == [
        "m-10",
        "m-7",
        "m-8",
        "m-9",
    ]
    # Overlapping segments: each member once.
    assert await count(service, audience("big-spenders", "loyal")) == 4
    assert await count(service, audience("new", "prospect")) == 2


async def test_a_condition_narrows_the_audience(service) -> None:
    assert await member_ids(service, audience("active", condition="m_score >= 3")) == [
        "m-5",
        "m-6",
    ]
    assert await count(service, audience(condition="m_score >= 4")) == 4
    # Rule tags count, as in segments.
    assert await member_ids(service, audience(condition="'vip' in tags")) == ["m-10", "m-9"]
    assert await count(service, audience()) == len(EVERYONE)


async def test_segments_too_long_to_join_into_one_condition_still_combine(service) -> None:
    # Each condition fits the 2,000 character limit; the two joined would not.
    padding = " and monetary >= 0" * 60
    await put_segment(service, "ordered-once", f"frequency == 1{padding}")
    await put_segment(service, "ordered-twice", f"frequency == 2{padding}")

    assert await member_ids(service, audience("ordered-once", "ordered-twice")) == ["m-1", "m-2"]


async def test_channel_counts_are_of_members_who_consent(service) -> None:
    await consent(service, "m-9", email=True)
    await consent(service, "m-10", email=True, sms=True)
    before = await service.CountAudience(audience("high-value"), Context())
    await consent(service, "m-10", email=False)
    after = await service.CountAudience(audience("high-value"), Context())

    assert dict(before.by_channel) == {"email": 2, "sms": 1, "push": 0, "onsite": 2}
    assert after.members == before.members == 2
    assert after.by_channel["email"] == 1 and after.by_channel["sms"] == 1
    assert await member_ids(service, audience("high-value"), channel="email") == ["m-9"]


async def test_a_member_without_personalization_consent_is_in_no_audience(service) -> None:
    await consent(service, "m-9", personalization=False)
    matched = await service.MatchAudiences(
        profiles_pb2.MatchAudiencesRequest(
            member_id="m-9", audiences=[audience(), audience("high-value")]
        ),
        Context(),
    )

    assert await count(service, audience()) == len(EVERYONE) - 1
    assert await member_ids(service, audience("high-value")) == ["m-10"]
    assert matched.known and list(matched.matched) == [False, False]
    assert not matched.member.consent.personalization


async def test_pages_hold_every_member_once_in_id_order(service) -> None:
    first = await service.AudienceMembers(
        profiles_pb2.AudienceMembersRequest(audience=audience(), limit=4), Context()
    )

    assert [m.member_id for m in first.members] == EVERYONE[:4]
    assert first.next_after == EVERYONE[3]
    assert await member_ids(service, audience(), limit=4) == EVERYONE
    assert await member_ids(service, audience(), limit=1) == EVERYONE
    assert await member_ids(service, audience("active", "loyal"), limit=3) == [
        f"m-{n}" for n in range(2, 9)
    ]


async def test_matching_agrees_with_the_members_listed(service) -> None:
    await put_segment(service, "big-spenders", "monetary >= 490")
    await consent(service, "m-4", personalization=False)
    await consent(service, "m-8", email=True)
    asked = [
        audience(),
        audience("active", condition="r_score >= 4"),
        audience("big-spenders", "new"),
        audience(condition="'vip' in tags or 'email' in consent"),
        audience("prospect"),
    ]
    listed = [
        {
            m.member_id: m
            for m in (
                await service.AudienceMembers(
                    profiles_pb2.AudienceMembersRequest(audience=a, limit=1000), Context()
                )
            ).members
        }
        for a in asked
    ]

    for member_id in EVERYONE:
        reply = await service.MatchAudiences(
            profiles_pb2.MatchAudiencesRequest(member_id=member_id, audiences=asked), Context()
        )
        assert list(reply.matched) == [member_id in members for members in listed], member_id
        assert reply.known
        for members in listed:
            if member_id in members:
                assert reply.member == members[member_id]
    assert sum(len(members) for members in listed) == 10 + 2 + 5 + 3 + 1
    reply = await service.MatchAudiences(
        profiles_pb2.MatchAudiencesRequest(member_id="m-10", audiences=asked), Context()
    )
    assert reply.member.m_score == 5 and reply.member.monetary == 1000
    assert "vip" in reply.member.tags and reply.preferred_channel == "app"


@pytest.mark.parametrize(
    ("wanted", "problem"),
    [
        (audience("active", "foo"), "segments: no segment 'foo'"),
        (audience(condition="spend > 3"), "condition: unknown field 'spend' at 1"),
        (audience("active", condition="m_score >= 4 and"), "condition: expected a field at 17"),
    ],
)
async def test_an_unknown_segment_or_a_bad_condition_is_named(
    service, wanted: profiles_pb2.Audience, problem: str
) -> None:
    calls = [
        service.CountAudience(wanted, Context()),
        service.AudienceMembers(profiles_pb2.AudienceMembersRequest(audience=wanted), Context()),
        service.MatchAudiences(
            profiles_pb2.MatchAudiencesRequest(member_id="m-1", audiences=[audience(), wanted]),
            Context(),
        ),
    ]
    for call, prefix in zip(calls, ["", "", "audiences[1]."], strict=True):
        with pytest.raises(Aborted) as refused:
            await call
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details.startswith(prefix + problem), refused.value.details


async def test_an_unknown_channel_or_member_id_is_refused(service) -> None:
    with pytest.raises(Aborted) as channel:
        await service.AudienceMembers(
            profiles_pb2.AudienceMembersRequest(audience=audience(), channel="fax"), Context()
        )
    with pytest.raises(Aborted) as member:
        await service.MatchAudiences(profiles_pb2.MatchAudiencesRequest(), Context())

    assert channel.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert channel.value.details.startswith("channel:")
    assert member.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_member_never_seen_is_in_no_audience_with_their_consent_shown(service) -> None:
    await consent(service, "visitor-9", sms=True)
    reply = await service.MatchAudiences(
        profiles_pb2.MatchAudiencesRequest(
            member_id="visitor-9", audiences=[audience(), audience("new", "prospect")]
        ),
        Context(),
    )
    profile = await service.GetProfile(
        profiles_pb2.GetProfileRequest(member_id="visitor-9"), Context()
    )

    assert not reply.known and list(reply.matched) == [False, False]
    assert reply.member.member_id == "visitor-9" and reply.preferred_channel == ""
    assert reply.member.consent == profile.profile.consent
    assert reply.member.consent.sms and not reply.member.consent.email
