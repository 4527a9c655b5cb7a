"""Composes a recommendation: profile -> candidates -> rules -> rank, within deadlines.

Every downstream call has its own deadline. When one fails or overruns, the answer
degrades (flagged `degraded`) instead of failing: popular items stand in for
candidates, local filters for the rules service, retrieval order for the ranker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from prometheus_client import Counter

from services.common.candidates import Candidate, from_protos, reason_for, to_protos
from services.gateway.clients import FleetClients
from services.gateway.settings import GatewaySettings
from services.gen.recofleet.campaigns.v1 import campaigns_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2
from services.gen.recofleet.retrieval.v1 import retrieval_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")
DEGRADED = Counter(
    "recofleet_gateway_degraded_total",
    "Answers that fell back because a service failed or overran its deadline.",
    ["service"],
)


@dataclass
class RankedEntry:
    item_id: str
    score: float
    reasons: list[str]
    category: str = ""


@dataclass
class Recommendation:
    recommendation_id: str
    member_id: str
    placement: str
    items: list[RankedEntry]
    model: str
    variant: str = "default"
    degraded: bool = False
    degraded_services: list[str] = field(default_factory=list)
    personalized: bool = True


def personalizable(profile: profiles_pb2.Profile | None) -> bool:
    """Whether the member's data may shape what they see: they did not withdraw consent,
    and it could be checked (a profiles service too old to say counts as consent)."""
    if profile is None:
        return False
    return not profile.HasField("consent") or profile.consent.personalization


class PopularCache:
    """The last popular list retrieval gave, for when retrieval cannot answer at all."""

    def __init__(self) -> None:
        self.candidates: list[Candidate] = []
        self.version = ""
        self.refreshed_at = 0.0

    def update(self, response: retrieval_pb2.CandidatesResponse) -> None:
        self.candidates = from_protos(response.candidates)
        self.version = response.model_version
        self.refreshed_at = time.monotonic()


class Composer:
    def __init__(self, clients: FleetClients, settings: GatewaySettings) -> None:
        self._c = clients
        self._s = settings
        self._d = settings.deadlines
        self.popular = PopularCache()

    async def refresh_popular(self) -> None:
        response = await self._c.retrieval.GetPopularItems(
            retrieval_pb2.GetPopularItemsRequest(limit=200), timeout=self._d.retrieval * 4
        )
        self.popular.update(response)

    async def profile(self, member_id: str) -> profiles_pb2.Profile:
        reply = await self._c.profiles.GetProfile(
            profiles_pb2.GetProfileRequest(member_id=member_id), timeout=self._d.profiles
        )
        return reply.profile

    async def manual_tag(
        self, member_id: str, tag: str, *, present: bool
    ) -> profiles_pb2.ManualTagsResponse:
        """Set (`present`) or remove a manual tag; the member's manual tags after."""
        request = profiles_pb2.ManualTagRequest(member_id=member_id, tag=tag)
        call = self._c.profiles.SetManualTag if present else self._c.profiles.RemoveManualTag
        reply: profiles_pb2.ManualTagsResponse = await call(request, timeout=self._d.profiles)
        return reply

    async def recommend(
        self,
        member_id: str,
        placement: str,
        limit: int,
        context_item: str | None,
        exclude: list[str],
    ) -> Recommendation:
        degraded: list[str] = []
        profile = await self._guard("profiles", degraded, self.profile(member_id))
        if not personalizable(profile):
            return await self._impersonal(
                member_id, placement, limit, context_item, exclude, degraded
            )
        assert profile is not None
        wanted = limit * self._s.candidate_factor
        candidates, version = await self._candidates(
            member_id, context_item, wanted, exclude, degraded, placement
        )
        kept = await self._rules(member_id, placement, candidates, [], exclude, degraded)
        items, ranker = await self._rank(profile, member_id, placement, kept, limit, degraded)
        return Recommendation(
            recommendation_id=f"r-{uuid.uuid4()}",
            member_id=member_id,
            placement=placement,
            items=items,
            model=f"{ranker}+als@{version}" if version else ranker,
            degraded=bool(degraded),
            degraded_services=degraded,
        )

    async def _impersonal(
        self,
        member_id: str,
        placement: str,
        limit: int,
        context_item: str | None,
        exclude: list[str],
        degraded: list[str],
    ) -> Recommendation:
        """What anyone would get here: the item in view's neighbours or the shop's popular
        items, nothing of the member's (no consent, or none could be checked)."""
        wanted = limit * self._s.candidate_factor
        candidates, version = await self._candidates(
            None, context_item, wanted, exclude, degraded, placement
        )
        kept = await self._rules("", placement, candidates, [], exclude, degraded)
        items = [_entry(c) for c in sorted(kept, key=lambda c: -c.score)[:limit]]
        return Recommendation(
            recommendation_id=f"r-{uuid.uuid4()}",
            member_id=member_id,
            placement=placement,
            items=items,
            model=f"non-personalized+als@{version}" if version else "non-personalized",
            degraded=bool(degraded),
            degraded_services=degraded,
            personalized=False,
        )

    async def similar(self, item_id: str, limit: int) -> Recommendation:
        degraded: list[str] = []
        candidates, version = await self._candidates(
            None, item_id, limit * self._s.candidate_factor, [item_id], degraded, "product"
        )
        kept = await self._rules("", "product", candidates, [], [item_id], degraded)
        items = [_entry(c) for c in kept[:limit]]
        return Recommendation(
            recommendation_id=f"r-{uuid.uuid4()}",
            member_id="",
            placement="product",
            items=items,
            model=f"als@{version}" if version else "popular",
            degraded=bool(degraded),
            degraded_services=degraded,
        )

    async def _candidates(
        self,
        member_id: str | None,
        context_item: str | None,
        wanted: int,
        exclude: list[str],
        degraded: list[str],
        placement: str = "home",
    ) -> tuple[list[Candidate], str]:
        """Retrieval's candidates for the placement. Whether the member's purchases may
        come back (buy again) is the placement's mix in retrieval, not decided here."""
        retrieval = self._c.retrieval
        call: Awaitable[retrieval_pb2.CandidatesResponse]
        if member_id is None and not context_item:
            call = retrieval.GetPopularItems(
                retrieval_pb2.GetPopularItemsRequest(limit=wanted, exclude_item_ids=exclude),
                timeout=self._d.retrieval,
            )
        else:
            call = retrieval.GetCandidates(
                retrieval_pb2.GetCandidatesRequest(
                    member_id=member_id or "",
                    limit=wanted,
                    exclude_item_ids=exclude,
                    placement=placement,
                    context_item_ids=[context_item] if context_item else [],
                ),
                timeout=self._d.retrieval,
            )
        reply = await self._guard("retrieval", degraded, call)
        if reply is None:
            banned = {*exclude, *([context_item] if context_item else [])}
            stand_in = [c for c in self.popular.candidates if c.item_id not in banned]
            return stand_in[:wanted], self.popular.version
        return from_protos(reply.candidates), reply.model_version

    async def _rules(
        self,
        member_id: str,
        placement: str,
        candidates: list[Candidate],
        purchased: list[str],
        exclude: list[str],
        degraded: list[str],
    ) -> list[Candidate]:
        reply = await self._guard(
            "campaigns",
            degraded,
            self._c.campaigns.ApplyRules(
                campaigns_pb2.ApplyRulesRequest(
                    member_id=member_id,
                    placement=placement,
                    candidates=to_protos(candidates),
                    purchased_item_ids=purchased,
                    exclude_item_ids=exclude,
                ),
                timeout=self._d.campaigns,
            ),
        )
        if reply is None:
            # Stock is unknown without campaigns; what the caller and the profile rule out
            # can still be honoured here.
            banned = set(purchased) | set(exclude)
            return [c for c in candidates if c.item_id not in banned]
        return from_protos(reply.candidates)

    async def _rank(
        self,
        profile: profiles_pb2.Profile | None,
        member_id: str,
        placement: str,
        candidates: list[Candidate],
        limit: int,
        degraded: list[str],
    ) -> tuple[list[RankedEntry], str]:
        member = ranking_pb2.MemberContext(
            member_id=member_id,
            category_weights={c.category: c.weight for c in profile.categories} if profile else {},
            orders=profile.rfm.frequency if profile else 0,
        )
        reply = await self._guard(
            "ranking",
            degraded,
            self._c.ranking.Rank(
                ranking_pb2.RankRequest(
                    member=member,
                    candidates=to_protos(candidates),
                    placement=placement,
                    limit=limit,
                ),
                timeout=self._d.ranking,
            ),
        )
        if reply is None:
            ordered = sorted(candidates, key=lambda c: -c.score)[:limit]
            return [_entry(c) for c in ordered], "retrieval-order"
        items = [RankedEntry(i.item_id, i.score, list(i.reasons), i.category) for i in reply.items]
        return items, reply.model

    @staticmethod
    async def _guard(service: str, degraded: list[str], call: Awaitable[T]) -> T | None:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            log.warning("%s failed with %s: %s; degrading", service, exc.code().name, exc.details())
            DEGRADED.labels(service).inc()
            degraded.append(service)
            return None


def _entry(candidate: Candidate) -> RankedEntry:
    return RankedEntry(
        candidate.item_id,
        round(candidate.score, 6),
        [reason_for(candidate.source)],
        candidate.category,
    )
