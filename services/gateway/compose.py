"""Composes a recommendation: profile and candidates at once, then rules, then rank.

A request has one time budget (`recommend_budget_s`); every downstream call gets its own
deadline or what is left of the budget, whichever is shorter. When a call fails, overruns
or no longer fits, the answer degrades (flagged `degraded`) instead of failing: popular
items stand in for candidates, local filters for the rules service, retrieval order for
the ranker. A service that keeps failing is not called at all until it answers a health
check again (its circuit breaker), and past `max_in_flight` requests at once an answer
is the popular items at once, so that overload does not queue without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import grpc
from prometheus_client import Counter

from services.common.candidates import reason_for
from services.common.telemetry import recommendation_context
from services.gateway.clients import FleetClients
from services.gateway.resilience import Breaker, Budget, InFlight, Probe, health_probe
from services.gateway.settings import GatewaySettings
from services.gen.recofleet.campaigns.v1 import campaigns_pb2
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2
from services.gen.recofleet.retrieval.v1 import retrieval_pb2
from services.ranking.arrangement import arrange, arranges
from services.ranking.rankers import RankedItem

log = logging.getLogger(__name__)
T = TypeVar("T")
# Candidates stay protobuf messages from retrieval's answer to ranking's request: copying
# them between messages is done in C, converting them to Python objects and back was a
# fifth of the gateway's CPU per recommendation.
Candidates = Sequence[common_pb2.Candidate]
Shown = Callable[["Recommendation", Mapping[str, Mapping[str, float]]], None]
# The source of a candidate a merchandising rule added (services/campaigns/merchandising.py).
RULE_SOURCE = "rule"
# The model of an answer with nothing of the member's in it.
NON_PERSONALIZED = "non-personalized"
# What members outside every experiment are in.
DEFAULT_VARIANT = "default"
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
    # The candidate sources that proposed the item, most confident first, and the
    # merchandising rules that moved or promoted it (Ruled.attributed).
    sources: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)


@dataclass
class Recommendation:
    recommendation_id: str
    member_id: str
    placement: str
    items: list[RankedEntry]
    model: str
    # The experiment variant the member is in here; "default" outside any experiment.
    variant: str = "default"
    experiment_id: str = ""
    degraded: bool = False
    degraded_services: list[str] = field(default_factory=list)
    personalized: bool = True
    # How long the answer took to compose, from the composer receiving the request
    # (monotonic clock); None for an answer the composer did not make.
    latency_ms: float | None = None


def personalizable(profile: profiles_pb2.Profile | None) -> bool:
    """Whether the member's data may shape what they see: they did not withdraw consent,
    and it could be checked (a profiles service too old to say counts as consent)."""
    if profile is None:
        return False
    return not profile.HasField("consent") or profile.consent.personalization


class PopularCache:
    """The last popular list retrieval gave, for when retrieval cannot answer at all."""

    def __init__(self) -> None:
        self.candidates: list[common_pb2.Candidate] = []
        self.version = ""
        self.refreshed_at = 0.0

    def update(self, response: retrieval_pb2.CandidatesResponse) -> None:
        self.candidates = list(response.candidates)
        self.version = response.model_version
        self.refreshed_at = time.monotonic()


@dataclass
class Trip:
    """One request on its way through the fleet: its time left and what degraded."""

    budget: Budget
    degraded: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Asked:
    """What a recommendation request asks for."""

    member_id: str
    placement: str
    limit: int
    context_item: str | None
    exclude: list[str]
    # When the composer received the request (time.monotonic), for the answer's latency.
    received_at: float = field(default_factory=time.monotonic)
    recommendation_id: str = field(default_factory=lambda: f"r-{uuid.uuid4()}")

    def answer(
        self,
        items: list[RankedEntry],
        model: str,
        degraded: list[str],
        personalized: bool = True,
        ranked: Ranked | None = None,
    ) -> Recommendation:
        return Recommendation(
            recommendation_id=self.recommendation_id,
            member_id=self.member_id,
            placement=self.placement,
            items=items,
            model=model,
            degraded=bool(degraded),
            degraded_services=degraded,
            personalized=personalized,
            variant=ranked.variant if ranked else DEFAULT_VARIANT,
            experiment_id=ranked.experiment_id if ranked else "",
            latency_ms=(time.monotonic() - self.received_at) * 1000,
        )


@dataclass(frozen=True)
class Ranked:
    """What ranking said besides the order."""

    model: str
    variant: str = DEFAULT_VARIANT
    experiment_id: str = ""


@dataclass(frozen=True)
class Ruled:
    """What the merchandising rules made of the candidates."""

    candidates: Candidates
    arrangement: common_pb2.Arrangement | None = None

    def arranged(self, ordered: Candidates, limit: int) -> list[RankedEntry]:
        """`ordered` (no ranker's order: the impersonal and similar-items answers) as the
        rules arrange it, with the same code ranking applies to its own order."""
        ranked = [RankedItem(c.item_id, round(c.score, 6), _said(c), c.category) for c in ordered]
        if self.arrangement is not None and arranges(self.arrangement):
            ranked = arrange(ranked, self.arrangement, limit)
        entries = [RankedEntry(r.item_id, r.score, r.reasons, r.category) for r in ranked[:limit]]
        return self.attributed(entries)

    def attributed(self, entries: list[RankedEntry]) -> list[RankedEntry]:
        """`entries` with the sources that proposed each and the rules that touched it,
        from the candidates and arrangement the gateway holds (no service repeats them)."""
        by_id = {c.item_id: c for c in self.candidates}
        touched = _touched_by(self.arrangement)
        for entry in entries:
            candidate = by_id.get(entry.item_id)
            entry.sources = _sources_of(candidate) if candidate is not None else []
            entry.rules = touched.get(entry.item_id, [])
        return entries


def _touched_by(arrangement: common_pb2.Arrangement | None) -> dict[str, list[str]]:
    """Each item's rules in the arrangement (pins, boosts and buries, promotions), once each
    in the order the arrangement names them."""
    if arrangement is None:
        return {}
    named: list[tuple[str, str]] = [(p.item_id, p.rule) for p in arrangement.pins]
    named += [(a.item_id, a.rule) for a in arrangement.adjustments]
    named += [(i, p.rule) for p in arrangement.promotions for i in p.item_ids]
    touched: dict[str, list[str]] = {}
    for item_id, rule in named:
        rules = touched.setdefault(item_id, [])
        if rule and rule not in rules:
            rules.append(rule)
    return touched


# The services a recommendation calls, each behind a breaker of its own.
COMPOSED = ("profiles", "retrieval", "campaigns", "ranking")
# A preview asks the services of an answer one after another, and rules and rank twice:
# more than an answer's budget, and no member is waiting on it.
PREVIEW_BUDGET_S = 2.0


class PreviewFailed(Exception):
    """A preview could not be composed exactly; `services` failed, overran or were skipped."""

    def __init__(self, services: Sequence[str]) -> None:
        super().__init__(", ".join(services))
        self.services = list(services)


class InvalidDraft(ValueError):
    """Campaigns refused the draft rule of a preview (the message names the field)."""


def _exact(trip: Trip) -> None:
    if trip.degraded:
        raise PreviewFailed(trip.degraded)


class Composer:
    def __init__(
        self,
        clients: FleetClients,
        settings: GatewaySettings,
        probes: Mapping[str, Probe] | None = None,
    ) -> None:
        """`probes` tell each breaker whether its service is back: by default the standard
        gRPC health check on the service's channel."""
        self._c = clients
        self._s = settings
        self._d = settings.deadlines
        self.popular = PopularCache()
        if probes is None:
            probes = {name: health_probe(clients.channels[name]) for name in COMPOSED}
        self.breakers = {name: Breaker(name, probes[name], settings.breakers) for name in COMPOSED}
        self.in_flight = InFlight(settings.max_in_flight)
        # Told of every recommendation answer, with the sources of the candidates shown:
        # the impression log (services/gateway/impressions.py) when the app sets it.
        self.shown: Shown | None = None

    async def close(self) -> None:
        for breaker in self.breakers.values():
            await breaker.close()

    def _trip(self) -> Trip:
        return Trip(Budget(self._s.recommend_budget_s))

    async def refresh_popular(self) -> None:
        response = await self._c.retrieval.GetPopularItems(
            retrieval_pb2.GetPopularItemsRequest(limit=200), timeout=self._d.retrieval * 4
        )
        self.popular.update(response)

    async def profile(
        self,
        member_id: str,
        timeout: float | None = None,
        view: profiles_pb2.ProfileView.ValueType = profiles_pb2.PROFILE_VIEW_UNSPECIFIED,
        recent: int = 0,
    ) -> profiles_pb2.Profile:
        reply = await self._c.profiles.GetProfile(
            profiles_pb2.GetProfileRequest(member_id=member_id, view=view, recent_limit=recent),
            timeout=timeout or self._d.profiles,
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
        asked = Asked(member_id, placement, limit, context_item, exclude)
        if self.in_flight.full:
            return self._overloaded(asked)
        with self.in_flight, recommendation_context(asked.recommendation_id):
            return await self._recommend(asked)

    async def _recommend(self, asked: Asked) -> Recommendation:
        trip = self._trip()
        member_id, placement = asked.member_id, asked.placement
        # Profile and candidates at once: the candidates are thrown away, unseen, when the
        # profile says the member withdrew consent (rare), which costs less than waiting.
        ahead = Trip(trip.budget)
        coming = asyncio.ensure_future(
            self._candidates(
                ahead, member_id, asked.context_item, self._wanted(asked), asked.exclude, placement
            )
        )
        profile = await self._call(
            "profiles",
            trip,
            self._d.profiles,
            partial(
                self.profile,
                member_id,
                view=profiles_pb2.PROFILE_VIEW_BASIC,
                recent=self._s.ranking_recent_items,
            ),
        )
        if not personalizable(profile):
            coming.cancel()
            return await self._impersonal(trip, asked)
        assert profile is not None
        candidates, version = await coming
        trip.degraded.extend(ahead.degraded)
        items, ranked, ruled = await self._shaped(trip, asked, candidates, profile)
        model = f"{ranked.model}+als@{version}" if version else ranked.model
        answer = asked.answer(items, model, trip.degraded, ranked=ranked)
        return self._told(answer, ruled.candidates)

    async def _shaped(
        self,
        trip: Trip,
        asked: Asked,
        candidates: Candidates,
        profile: profiles_pb2.Profile | None,
        drafts: Sequence[str] = (),
    ) -> tuple[list[RankedEntry], Ranked, Ruled]:
        """The candidates as the placement's rules (with `drafts`, unsaved ones) and the
        ranker shape them for a member; for anyone else (no `profile`), the rules and their
        arranging alone, by retrieval's score (no ranker's order: nothing of the member's)."""
        if profile is None:
            ruled = await self._rules(trip, asked, candidates, drafts=drafts)
            ordered = sorted(ruled.candidates, key=lambda c: -c.score)
            return ruled.arranged(ordered, asked.limit), Ranked(NON_PERSONALIZED), ruled
        purchases = recent_purchases(profile)
        ruled = await self._rules(trip, asked, candidates, asked.member_id, purchases, drafts)
        items, ranked = await self._rank(trip, profile, asked, ruled)
        return items, ranked, ruled

    def _told(self, answer: Recommendation, candidates: Candidates = ()) -> Recommendation:
        log.debug(
            "answered %s at %s: %d items by %s, degraded: %s",
            answer.member_id,
            answer.placement,
            len(answer.items),
            answer.model,
            ",".join(answer.degraded_services) or "no",
        )
        if self.shown is not None:
            wanted = {item.item_id for item in answer.items}
            sources = {c.item_id: c.sources for c in candidates if c.item_id in wanted}
            self.shown(answer, sources)
        return answer

    def _wanted(self, asked: Asked) -> int:
        """Candidates to ask for: enough to survive the rules."""
        return asked.limit * self._s.candidate_factor

    def _overloaded(self, asked: Asked) -> Recommendation:
        """The cheapest valid answer, with no call at all: the shop's popular items."""
        DEGRADED.labels("gateway").inc()
        banned = {*asked.exclude, *([asked.context_item] if asked.context_item else [])}
        stand_in = [c for c in self.popular.candidates if c.item_id not in banned]
        version = self.popular.version
        items = [_entry(c) for c in stand_in[: asked.limit]]
        model = f"popular@{version}" if version else "popular"
        return self._told(asked.answer(items, model, ["gateway"], personalized=False))

    async def _impersonal(self, trip: Trip, asked: Asked) -> Recommendation:
        """What anyone would get here: the item in view's neighbours or the shop's popular
        items, nothing of the member's (no consent, or none could be checked)."""
        candidates, version = await self._candidates(
            trip, None, asked.context_item, self._wanted(asked), asked.exclude, asked.placement
        )
        items, _, ruled = await self._shaped(trip, asked, candidates, None)
        model = f"{NON_PERSONALIZED}+als@{version}" if version else NON_PERSONALIZED
        answer = asked.answer(items, model, trip.degraded, personalized=False)
        return self._told(answer, ruled.candidates)

    async def similar(self, item_id: str, limit: int) -> Recommendation:
        asked = Asked("", "product", limit, item_id, [item_id])
        if self.in_flight.full:
            return self._overloaded(asked)
        with self.in_flight, recommendation_context(asked.recommendation_id):
            return await self._similar(asked)

    async def _similar(self, asked: Asked) -> Recommendation:
        trip = self._trip()
        candidates, version = await self._candidates(
            trip, None, asked.context_item, self._wanted(asked), asked.exclude, asked.placement
        )
        ruled = await self._rules(trip, asked, candidates)
        items = ruled.arranged(ruled.candidates, asked.limit)
        return asked.answer(items, f"als@{version}" if version else "popular", trip.degraded)

    async def preview(self, asked: Asked, draft: str) -> tuple[Recommendation, Recommendation]:
        """The placement's answer without and with `draft`, a rule campaigns has not saved,
        from one profile and one set of candidates, so that the two differ by the rule
        alone. Exact or not at all: a degraded answer would hide what the rule does
        (PreviewFailed; InvalidDraft for a rule campaigns refuses). Told to no one: a
        preview is not an impression."""
        trip = Trip(Budget(max(PREVIEW_BUDGET_S, self._s.recommend_budget_s)))
        profile = None
        if asked.member_id:
            _, profile = await asyncio.gather(
                self._check_draft(asked, draft),
                self._call("profiles", trip, self._d.profiles, partial(self._basic, asked)),
            )
            _exact(trip)
        else:
            await self._check_draft(asked, draft)
        # As an answer: nothing of a member who withdrew consent (or of no member).
        member = profile if personalizable(profile) else None
        candidates, version = await self._candidates(
            trip,
            asked.member_id if member else None,
            asked.context_item,
            self._wanted(asked),
            asked.exclude,
            asked.placement,
        )
        _exact(trip)
        before, after = await asyncio.gather(
            self._previewed(trip.budget, asked, candidates, member, ()),
            self._previewed(trip.budget, asked, candidates, member, (draft,)),
        )
        model = f"{before.model}+als@{version}" if version else before.model
        before.model = after.model = model
        return before, after

    async def _basic(self, asked: Asked, timeout: float) -> profiles_pb2.Profile:
        return await self.profile(
            asked.member_id,
            timeout,
            view=profiles_pb2.PROFILE_VIEW_BASIC,
            recent=self._s.ranking_recent_items,
        )

    async def _check_draft(self, asked: Asked, draft: str) -> None:
        """Campaigns validates the draft as it would apply it (no candidates): a wrong
        field is the caller's to fix, not a degraded preview."""
        request = campaigns_pb2.ApplyRulesRequest(
            placement=asked.placement, limit=asked.limit, draft_rules_json=[draft]
        )
        try:
            await self._c.merchandising.ApplyRules(request, timeout=self._d.campaigns * 4)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidDraft(exc.details() or "the rule is invalid") from exc
            raise PreviewFailed(["campaigns"]) from exc

    async def _previewed(
        self,
        budget: Budget,
        asked: Asked,
        candidates: Candidates,
        profile: profiles_pb2.Profile | None,
        drafts: Sequence[str],
    ) -> Recommendation:
        """One side of a preview, shaped as an answer would be, exactly."""
        trip = Trip(budget)
        items, ranked, _ = await self._shaped(trip, asked, candidates, profile, drafts)
        _exact(trip)
        return asked.answer(items, ranked.model, [], profile is not None, ranked)

    async def _candidates(
        self,
        trip: Trip,
        member_id: str | None,
        context_item: str | None,
        wanted: int,
        exclude: list[str],
        placement: str = "home",
    ) -> tuple[Candidates, str]:
        """Retrieval's candidates for the placement. Whether the member's purchases may
        come back (buy again) is the placement's mix in retrieval, not decided here."""
        retrieval = self._c.retrieval
        call: Callable[..., Awaitable[retrieval_pb2.CandidatesResponse]]
        if member_id is None and not context_item:
            popular = retrieval_pb2.GetPopularItemsRequest(limit=wanted, exclude_item_ids=exclude)
            call = partial(retrieval.GetPopularItems, popular)
        else:
            request = retrieval_pb2.GetCandidatesRequest(
                member_id=member_id or "",
                limit=wanted,
                exclude_item_ids=exclude,
                placement=placement,
                context_item_ids=[context_item] if context_item else [],
            )
            call = partial(retrieval.GetCandidates, request)
        reply = await self._call("retrieval", trip, self._d.retrieval, call)
        if reply is None:
            banned = {*exclude, *([context_item] if context_item else [])}
            stand_in = [c for c in self.popular.candidates if c.item_id not in banned]
            return stand_in[:wanted], self.popular.version
        return reply.candidates, reply.model_version

    async def _rules(
        self,
        trip: Trip,
        asked: Asked,
        candidates: Candidates,
        member_id: str = "",
        purchases: Sequence[campaigns_pb2.PurchasedItem] = (),
        drafts: Sequence[str] = (),
    ) -> Ruled:
        """The candidates the placement's rules keep (and add), and how they want the list
        arranged; the caller's exclusions alone when campaigns cannot answer. `drafts`:
        unsaved rules (JSON) applied with the saved ones, for a preview."""
        request = campaigns_pb2.ApplyRulesRequest(
            member_id=member_id,
            placement=asked.placement,
            candidates=candidates,
            exclude_item_ids=asked.exclude,
            recent_purchases=purchases,
            limit=asked.limit,
            draft_rules_json=drafts,
        )
        reply = await self._call(
            "campaigns",
            trip,
            self._d.campaigns,
            partial(self._c.merchandising.ApplyRules, request),
        )
        if reply is None:
            # Stock is unknown without campaigns; what the caller rules out can still be
            # honoured here.
            banned = set(asked.exclude)
            return Ruled([c for c in candidates if c.item_id not in banned])
        return Ruled(reply.candidates, reply.arrangement)

    async def _rank(
        self, trip: Trip, profile: profiles_pb2.Profile | None, asked: Asked, ruled: Ruled
    ) -> tuple[list[RankedEntry], Ranked]:
        request = ranking_pb2.RankRequest(
            member=member_context(asked.member_id, profile),
            candidates=ruled.candidates,
            placement=asked.placement,
            limit=asked.limit,
            arrangement=ruled.arrangement,
        )
        reply = await self._call(
            "ranking",
            trip,
            self._d.ranking,
            partial(self._c.ranking.Rank, request),
        )
        if reply is None:
            # Retrieval's order as it is: the gateway does not redo ranking's arranging.
            ordered = sorted(ruled.candidates, key=lambda c: -c.score)[: asked.limit]
            return ruled.attributed([_entry(c) for c in ordered]), Ranked("retrieval-order")
        items = [RankedEntry(i.item_id, i.score, list(i.reasons), i.category) for i in reply.items]
        return ruled.attributed(items), Ranked(
            reply.model, reply.variant or DEFAULT_VARIANT, reply.experiment_id
        )

    async def _call(
        self,
        service: str,
        trip: Trip,
        deadline_s: float,
        call: Callable[..., Awaitable[T]],
    ) -> T | None:
        """The service's answer, or None (the trip degraded) when its breaker is open, the
        budget has no room left for it, or it failed or overran."""
        breaker = self.breakers[service]
        timeout = trip.budget.timeout(deadline_s)
        if breaker.open or timeout is None:
            return self._degrade(service, trip)
        try:
            reply = await call(timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("%s failed with %s: %s; degrading", service, exc.code().name, exc.details())
            breaker.failed(exc.code())
            return self._degrade(service, trip)
        breaker.succeeded()
        return reply

    @staticmethod
    def _degrade(service: str, trip: Trip) -> None:
        DEGRADED.labels(service).inc()
        trip.degraded.append(service)


def member_context(
    member_id: str, profile: profiles_pb2.Profile | None
) -> ranking_pb2.MemberContext:
    """What ranking knows of the member: the portrait's figures a ranker may use."""
    if profile is None:
        return ranking_pb2.MemberContext(member_id=member_id)
    rfm, price = profile.rfm, profile.price
    return ranking_pb2.MemberContext(
        member_id=member_id,
        category_weights={c.category: c.weight for c in profile.categories},
        orders=rfm.frequency,
        r_score=rfm.r_score,
        f_score=rfm.f_score,
        m_score=rfm.m_score,
        price_band=price.band,
        price_percentile=price.percentile if price.HasField("percentile") else None,
        affinities={a.category: a.share for a in profile.affinities},
        lifecycle=profile.lifecycle,
        recent_item_ids=[r.item_id for r in profile.recent_items],
    )


def recent_purchases(profile: profiles_pb2.Profile) -> list[campaigns_pb2.PurchasedItem]:
    """The member's purchases among their recent items, with their time (for rules that
    leave out what was bought lately)."""
    return [
        campaigns_pb2.PurchasedItem(item_id=item.item_id, at=item.at)
        for item in profile.recent_items
        if item.event_type == "purchase"
    ]


def _entry(candidate: common_pb2.Candidate) -> RankedEntry:
    return RankedEntry(
        candidate.item_id,
        round(candidate.score, 6),
        _said(candidate),
        candidate.category,
        sources=_sources_of(candidate),
    )


def _sources_of(candidate: common_pb2.Candidate) -> list[str]:
    """The sources that proposed the candidate, most confident first; its one source for
    a candidate without their chances (an item a rule added, a stand-in)."""
    chances = candidate.sources
    if not chances:
        return [candidate.source] if candidate.source else []
    return sorted(chances, key=lambda s: -chances[s])


def _said(candidate: common_pb2.Candidate) -> list[str]:
    """The reason retrieval's source gives; none for an item a rule added (the rule's own
    reason comes with the arrangement)."""
    return [] if candidate.source == RULE_SOURCE else [reason_for(candidate.source)]
