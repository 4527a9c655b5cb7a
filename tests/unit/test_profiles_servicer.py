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
    yield ProfilesServicer(store, 20, Portraitist(settings), Clock.fixed(NOW))
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
