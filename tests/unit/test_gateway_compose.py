"""The gateway's composer: profile -> candidates -> rules -> rank, degrading instead of failing.

The downstream services are tiny fake stubs at the gRPC edge: objects with the stubs'
async methods that answer real protobuf messages, or raise the error a dead service gives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from services.gateway.clients import FleetClients
from services.gateway.compose import Composer, Recommendation
from services.gateway.settings import GatewaySettings
from services.gen.recofleet.campaigns.v1 import campaigns_pb2
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2
from services.gen.recofleet.retrieval.v1 import retrieval_pb2


def down() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="down"
    )


class Stub:
    """Records requests; raises UNAVAILABLE for the methods named in `failing`."""

    def __init__(self) -> None:
        self.requests: dict[str, list[Any]] = {}
        self.failing: set[str] = set()
        # Seconds a method takes; past the caller's timeout it gives DEADLINE_EXCEEDED.
        self.delay: dict[str, float] = {}
        self.timeouts: dict[str, list[float | None]] = {}

    async def _called(self, method: str, request: Any, timeout: float | None) -> None:
        self.requests.setdefault(method, []).append(request)
        self.timeouts.setdefault(method, []).append(timeout)
        delay = self.delay.get(method, 0.0)
        if delay:
            await asyncio.sleep(min(delay, timeout or delay))
            if timeout is not None and delay > timeout:
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details="Deadline Exceeded",
                )
        if method in self.failing or "*" in self.failing:
            raise down()


class FakeProfiles(Stub):
    def __init__(self, purchased: Iterable[str], categories: dict[str, float]) -> None:
        super().__init__()
        self.purchased = list(purchased)
        self.categories = categories
        self.personalization = True

    async def GetProfile(
        self, request: profiles_pb2.GetProfileRequest, timeout: float | None = None
    ) -> profiles_pb2.GetProfileResponse:
        await self._called("GetProfile", request, timeout)
        return profiles_pb2.GetProfileResponse(
            profile=profiles_pb2.Profile(
                member_id=request.member_id,
                known=True,
                rfm=profiles_pb2.Rfm(frequency=len(self.purchased), monetary=12.0),
                categories=[
                    profiles_pb2.CategoryCount(category=c, weight=w)
                    for c, w in self.categories.items()
                ],
                purchased_item_ids=self.purchased,
                consent=profiles_pb2.Consent(personalization=self.personalization),
            )
        )


def candidate(item_id: str, score: float, source: str = "als") -> common_pb2.Candidate:
    return common_pb2.Candidate(
        item_id=item_id, score=score, popularity=0.5, category=item_id.split("-")[0], source=source
    )


class FakeRetrieval(Stub):
    """Answers from fixed lists; honours exclusions as retrieval does, unless told not to."""

    def __init__(self, pool: list[common_pb2.Candidate], popular: list[common_pb2.Candidate]):
        super().__init__()
        self.pool = pool
        self.popular = popular
        self.honour_exclusions = True

    def _answer(
        self, found: list[common_pb2.Candidate], request: Any, personalized: bool
    ) -> retrieval_pb2.CandidatesResponse:
        banned = set(request.exclude_item_ids) if self.honour_exclusions else set()
        kept = [c for c in found if c.item_id not in banned][: request.limit]
        return retrieval_pb2.CandidatesResponse(
            candidates=kept, model_version="v7", personalized=personalized
        )

    async def GetCandidates(
        self, request: retrieval_pb2.GetCandidatesRequest, timeout: float | None = None
    ) -> retrieval_pb2.CandidatesResponse:
        await self._called("GetCandidates", request, timeout)
        return self._answer(self.pool, request, True)

    async def GetSimilarItems(
        self, request: retrieval_pb2.GetSimilarItemsRequest, timeout: float | None = None
    ) -> retrieval_pb2.CandidatesResponse:
        await self._called("GetSimilarItems", request, timeout)
        return self._answer(self.pool, request, True)

    async def GetPopularItems(
        self, request: retrieval_pb2.GetPopularItemsRequest, timeout: float | None = None
    ) -> retrieval_pb2.CandidatesResponse:
        await self._called("GetPopularItems", request, timeout)
        return self._answer(self.popular, request, False)


class FakeCampaigns(Stub):
    """Drops the purchased, the excluded and what is in `sold_out`."""

    def __init__(self, sold_out: Iterable[str] = ()) -> None:
        super().__init__()
        self.sold_out = set(sold_out)
        self.arrangement: common_pb2.Arrangement | None = None
        self.added: list[common_pb2.Candidate] = []

    async def ApplyRules(
        self, request: campaigns_pb2.ApplyRulesRequest, timeout: float | None = None
    ) -> campaigns_pb2.ApplyRulesResponse:
        await self._called("ApplyRules", request, timeout)
        banned = set(request.purchased_item_ids) | set(request.exclude_item_ids) | self.sold_out
        return campaigns_pb2.ApplyRulesResponse(
            candidates=[c for c in request.candidates if c.item_id not in banned] + self.added,
            arrangement=self.arrangement,
        )


class FakeRanking(Stub):
    """Ranks by category weight first, then by score: an order retrieval alone would not give."""

    async def Rank(
        self, request: ranking_pb2.RankRequest, timeout: float | None = None
    ) -> ranking_pb2.RankResponse:
        await self._called("Rank", request, timeout)
        weights = dict(request.member.category_weights)
        ordered = sorted(
            request.candidates, key=lambda c: (-weights.get(c.category, 0.0), -c.score)
        )[: request.limit]
        return ranking_pb2.RankResponse(
            model="blend",
            items=[
                common_pb2.ScoredItem(
                    item_id=c.item_id,
                    score=round(1.0 - n / 100, 6),
                    reasons=[f"you like {c.category}"],
                    category=c.category,
                )
                for n, c in enumerate(ordered)
            ],
        )


class FakeProbes:
    """Health checks the test answers: a service named in `up` is back."""

    def __init__(self) -> None:
        self.up: set[str] = set()
        self.asked: list[str] = []

    def each(self) -> dict[str, Any]:
        def probe_of(service: str) -> Any:
            async def probe(timeout_s: float) -> bool:
                self.asked.append(service)
                return service in self.up

            return probe

        return {s: probe_of(s) for s in ("profiles", "retrieval", "campaigns", "ranking")}


class Fleet:
    def __init__(self, settings: GatewaySettings | None = None) -> None:
        # Scores deliberately out of order, so "ordered by score" is something to check.
        self.pool = [
            candidate("books-1", 0.4),
            candidate("garden-1", 0.9),
            candidate("bought-1", 0.95),
            candidate("books-2", 0.7),
            candidate("garden-2", 0.2),
            candidate("unwanted-1", 0.85),
            candidate("garden-3", 0.6),
            candidate("books-3", 0.1),
            candidate("toys-1", 0.5),
            candidate("sold-1", 0.8),
        ]
        self.popular_items = [
            candidate("bought-1", 1.0, "popular"),
            candidate("toys-9", 0.9, "popular"),
            candidate("unwanted-1", 0.8, "popular"),
            candidate("garden-9", 0.7, "popular"),
            candidate("books-9", 0.6, "popular"),
        ]
        self.profiles = FakeProfiles(["bought-1", "bought-2"], {"garden": 5.0, "books": 1.0})
        self.retrieval = FakeRetrieval(self.pool, self.popular_items)
        self.campaigns = FakeCampaigns(sold_out=["sold-1"])
        self.ranking = FakeRanking()
        clients = FleetClients(
            channels={},
            ingestion=None,  # type: ignore[arg-type]
            profiles=self.profiles,  # type: ignore[arg-type]
            retrieval=self.retrieval,  # type: ignore[arg-type]
            ranking=self.ranking,  # type: ignore[arg-type]
            campaigns=None,  # type: ignore[arg-type]
            analytics=None,  # type: ignore[arg-type]
            merchandising=self.campaigns,  # type: ignore[arg-type]
        )
        self.probes = FakeProbes()
        self.composer = Composer(clients, settings or GatewaySettings(), probes=self.probes.each())

    async def recommend(self, limit: int = 3, exclude: list[str] | None = None) -> Recommendation:
        return await self.composer.recommend("m-1", "home", limit, None, exclude or [])


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


def item_ids(rec: Recommendation) -> list[str]:
    return [i.item_id for i in rec.items]


def degraded_count(service: str) -> float:
    value = REGISTRY.get_sample_value("recofleet_gateway_degraded_total", {"service": service})
    return value or 0.0


async def test_happy_path(fleet: Fleet) -> None:
    rec = await fleet.recommend(limit=3, exclude=["unwanted-1"])

    asked = fleet.retrieval.requests["GetCandidates"][0]
    assert asked.member_id == "m-1"
    # Whether purchases come back (buy again) is the placement's mix in retrieval: the
    # gateway passes the placement and the caller's exclusions, not the member's purchases.
    assert set(asked.exclude_item_ids) == {"unwanted-1"}
    assert asked.placement == "home"
    assert asked.limit == 3 * GatewaySettings().candidate_factor
    rules = fleet.campaigns.requests["ApplyRules"][0]
    assert list(rules.purchased_item_ids) == []
    assert list(rules.exclude_item_ids) == ["unwanted-1"]
    rank = fleet.ranking.requests["Rank"][0]
    assert dict(rank.member.category_weights) == {"garden": 5.0, "books": 1.0}
    assert rank.limit == 3
    assert "sold-1" not in [c.item_id for c in rank.candidates]

    assert item_ids(rec) == ["garden-1", "garden-3", "garden-2"]  # the ranker's order
    assert rec.items[0].reasons == ["you like garden"]
    assert rec.items[0].category == "garden"
    assert rec.model == "blend+als@v7"
    assert rec.recommendation_id.startswith("r-")
    assert rec.member_id == "m-1"
    assert rec.placement == "home"
    assert not rec.degraded
    assert rec.degraded_services == []


async def test_each_recommendation_has_its_own_id(fleet: Fleet) -> None:
    first, second = await fleet.recommend(), await fleet.recommend()

    assert first.recommendation_id != second.recommendation_id
    assert len(first.recommendation_id) > len("r-")


@pytest.mark.parametrize("limit", [1, 5])
async def test_limit_is_respected(fleet: Fleet, limit: int) -> None:
    rec = await fleet.recommend(limit=limit)

    assert len(rec.items) == limit


async def test_retrieval_down_serves_the_popular_cache(fleet: Fleet) -> None:
    await fleet.composer.refresh_popular()
    fleet.retrieval.failing.add("GetCandidates")
    before = degraded_count("retrieval")

    rec = await fleet.recommend(limit=2, exclude=["unwanted-1"])

    assert rec.degraded
    assert rec.degraded_services == ["retrieval"]
    # The cached popular list, minus what was excluded, goes on to be ranked.
    ranked = [c.item_id for c in fleet.ranking.requests["Rank"][0].candidates]
    assert ranked == ["bought-1", "toys-9", "garden-9", "books-9"]
    assert item_ids(rec) == ["garden-9", "books-9"]
    assert rec.model == "blend+als@v7"
    assert degraded_count("retrieval") == before + 1


async def test_retrieval_down_before_any_popular_list_gives_an_empty_answer(
    fleet: Fleet,
) -> None:
    fleet.retrieval.failing.add("*")

    rec = await fleet.recommend()

    assert rec.degraded
    assert rec.items == []
    assert rec.recommendation_id.startswith("r-")


async def test_ranking_down_orders_by_retrieval_score(fleet: Fleet) -> None:
    fleet.ranking.failing.add("Rank")

    rec = await fleet.recommend(limit=4)

    assert rec.degraded
    assert rec.degraded_services == ["ranking"]
    # sold-1 (out of stock) is out; the rest by descending score, bought-1 (a purchase
    # retrieval proposed again) included.
    assert item_ids(rec) == ["bought-1", "garden-1", "unwanted-1", "books-2"]
    scores = [i.score for i in rec.items]
    assert scores == sorted(scores, reverse=True)
    assert all(i.reasons for i in rec.items)
    assert rec.model.startswith("retrieval-order")


async def test_campaigns_down_still_filters_the_excluded(fleet: Fleet) -> None:
    fleet.campaigns.failing.add("ApplyRules")
    fleet.retrieval.honour_exclusions = False  # e.g. a stale popular list

    rec = await fleet.recommend(limit=10, exclude=["unwanted-1"])

    assert rec.degraded
    assert rec.degraded_services == ["campaigns"]
    shown = item_ids(rec)
    assert "unwanted-1" not in shown
    ranked = [c.item_id for c in fleet.ranking.requests["Rank"][0].candidates]
    assert "unwanted-1" not in ranked
    assert "sold-1" in shown  # stock is unknown without campaigns
    assert len(shown) == 9


async def test_profiles_down_still_recommends_without_the_members_data(fleet: Fleet) -> None:
    # Consent cannot be checked: the answer uses nothing of the member's.
    fleet.profiles.failing.add("GetProfile")

    rec = await fleet.recommend(limit=3)

    assert rec.degraded
    assert rec.degraded_services == ["profiles"]
    assert len(rec.items) == 3
    assert not rec.personalized
    # The member's candidates, asked at once with the profile, are discarded unseen.
    assert fleet.retrieval.requests["GetPopularItems"]
    popular = [c.item_id for c in fleet.retrieval.popular]
    assert set(item_ids(rec)) <= set(popular)
    assert fleet.campaigns.requests["ApplyRules"][0].member_id == ""


async def test_no_personalization_consent_gets_what_anyone_would(fleet: Fleet) -> None:
    fleet.profiles.personalization = False

    rec = await fleet.recommend(limit=3)

    assert not rec.degraded
    assert not rec.personalized
    assert rec.model.startswith("non-personalized")
    assert "Rank" not in fleet.ranking.requests
    popular = [c.item_id for c in fleet.retrieval.popular]
    assert item_ids(rec) == [i for i in popular if i in item_ids(rec)]
    # Even what they bought is not used to filter: nothing of their portrait applies.
    assert list(fleet.retrieval.requests["GetPopularItems"][0].exclude_item_ids) == []


async def test_consenting_member_is_personalized(fleet: Fleet) -> None:
    rec = await fleet.recommend(limit=3)

    assert rec.personalized
    assert fleet.retrieval.requests["GetCandidates"][0].member_id


async def test_everything_down_never_raises(fleet: Fleet) -> None:
    await fleet.composer.refresh_popular()
    for stub in (fleet.profiles, fleet.retrieval, fleet.campaigns, fleet.ranking):
        stub.failing.add("*")

    rec = await fleet.recommend(limit=3, exclude=["toys-9"])

    assert rec.degraded
    # Without a profile nothing is personal, so ranking (which weighs the member's
    # portrait) is not asked.
    assert sorted(rec.degraded_services) == ["campaigns", "profiles", "retrieval"]
    # No profile, so nothing is known to be bought: popular items minus the exclusion.
    assert item_ids(rec) == ["bought-1", "unwanted-1", "garden-9"]


async def test_similar_items_exclude_the_item_itself(fleet: Fleet) -> None:
    rec = await fleet.composer.similar("garden-1", 3)

    asked = fleet.retrieval.requests["GetCandidates"][0]
    assert list(asked.context_item_ids) == ["garden-1"]
    assert asked.placement == "product"
    assert asked.member_id == ""
    assert list(asked.exclude_item_ids) == ["garden-1"]
    assert "garden-1" not in item_ids(rec)
    assert len(rec.items) == 3
    assert rec.model == "als@v7"
    assert not rec.degraded


async def test_a_request_fits_one_budget_not_the_sum_of_deadlines() -> None:
    # Each call alone is within its deadline (0.25 s), together they are not.
    fleet = Fleet(GatewaySettings(recommend_budget_s=0.3))
    fleet.profiles.delay["GetProfile"] = 0.2
    fleet.campaigns.delay["ApplyRules"] = 0.2
    started = time.monotonic()

    rec = await fleet.recommend(limit=3)

    took = time.monotonic() - started
    assert rec.degraded_services == ["campaigns", "ranking"]
    assert len(rec.items) == 3  # still an answer: retrieval order, locally filtered
    (rules_timeout,) = fleet.campaigns.timeouts["ApplyRules"]
    assert rules_timeout is not None and rules_timeout <= 0.3 - 0.2 + 0.01
    assert "Rank" not in fleet.ranking.requests  # no time left: not even asked
    assert took < 0.3 + 0.2, f"{took:.3f} s, well past the 0.3 s budget"


async def test_profile_and_candidates_are_asked_at_once() -> None:
    fleet = Fleet()
    fleet.profiles.delay["GetProfile"] = 0.2
    answer = asyncio.ensure_future(fleet.recommend(limit=3))
    await asyncio.sleep(0.05)

    assert "GetCandidates" in fleet.retrieval.requests  # while the profile is on its way
    assert not (await answer).degraded


async def test_a_failing_service_is_skipped_until_it_answers_a_health_check() -> None:
    settings = GatewaySettings.model_validate(
        {"breakers": {"failures": 3, "probe_interval_s": 0.01}}
    )
    fleet = Fleet(settings)
    fleet.ranking.failing.add("Rank")
    for _ in range(3):
        assert (await fleet.recommend()).degraded_services == ["ranking"]
    assert fleet.composer.breakers["ranking"].open

    rec = await fleet.recommend()
    assert rec.degraded_services == ["ranking"]
    assert len(fleet.ranking.requests["Rank"]) == 3  # open: not called, degraded at once

    fleet.ranking.failing.clear()
    fleet.probes.up.add("ranking")
    await asyncio.sleep(0.05)  # a few probe intervals
    assert not fleet.composer.breakers["ranking"].open
    rec = await fleet.recommend()
    assert not rec.degraded
    assert len(fleet.ranking.requests["Rank"]) == 4
    assert "ranking" in fleet.probes.asked
    await fleet.composer.close()


async def test_a_request_the_service_refuses_does_not_open_its_breaker() -> None:
    fleet = Fleet(GatewaySettings.model_validate({"breakers": {"failures": 1}}))
    fleet.composer.breakers["ranking"].failed(grpc.StatusCode.INVALID_ARGUMENT)
    assert not fleet.composer.breakers["ranking"].open
    fleet.composer.breakers["ranking"].failed(grpc.StatusCode.UNAVAILABLE)
    assert fleet.composer.breakers["ranking"].open
    await fleet.composer.close()


async def test_past_capacity_an_answer_is_the_popular_items_at_once() -> None:
    fleet = Fleet(GatewaySettings(max_in_flight=1))
    await fleet.composer.refresh_popular()
    fleet.profiles.delay["GetProfile"] = 0.1
    first = asyncio.ensure_future(fleet.recommend(limit=2))
    await asyncio.sleep(0.01)

    rec = await fleet.recommend(limit=2, exclude=["bought-1"])

    assert rec.degraded and rec.degraded_services == ["gateway"]
    assert item_ids(rec) == ["toys-9", "unwanted-1"]
    assert len(fleet.profiles.requests["GetProfile"]) == 1  # only the first one's
    assert not (await first).degraded


async def test_every_answer_is_told_to_the_impression_log_with_its_sources(fleet: Fleet) -> None:
    told: list[tuple[Recommendation, dict[str, dict[str, float]]]] = []
    fleet.composer.shown = lambda answer, sources: told.append(
        (answer, {i: dict(s) for i, s in sources.items()})
    )

    rec = await fleet.recommend(limit=3)
    fleet.ranking.failing = {"Rank"}
    degraded = await fleet.recommend(limit=3)

    assert [answer for answer, _ in told] == [rec, degraded]
    # The sources of exactly the items shown (the fakes' candidates carry none).
    assert set(told[0][1]) == set(item_ids(rec))
    assert told[1][0].degraded and told[1][0].variant == "default"


async def test_the_variant_ranking_chose_is_in_the_answer(fleet: Fleet) -> None:
    original = fleet.ranking.Rank

    async def in_experiment(request: Any, timeout: float | None = None) -> Any:
        reply = await original(request, timeout)
        reply.variant, reply.experiment_id = "treatment", "exp-1"
        return reply

    fleet.ranking.Rank = in_experiment  # type: ignore[method-assign]
    rec = await fleet.recommend()

    assert (rec.variant, rec.experiment_id) == ("treatment", "exp-1")
    member = fleet.ranking.requests["Rank"][0].member
    assert member.member_id == "m-1"


async def test_each_item_names_the_sources_that_proposed_it_and_the_rules_that_moved_it(
    fleet: Fleet,
) -> None:
    garden = next(c for c in fleet.pool if c.item_id == "garden-1")
    garden.sources.update({"buy_again": 0.2, "als": 0.6})
    fleet.campaigns.added = [candidate("garden-8", 0.0, "rule")]
    fleet.campaigns.arrangement = common_pb2.Arrangement(
        pins=[common_pb2.Pin(item_id="garden-8", position=1, rule="hero")],
        adjustments=[
            common_pb2.Adjustment(item_id="garden-1", weight=1.0, rule="garden-week"),
            common_pb2.Adjustment(item_id="garden-1", weight=0.5, rule="garden-week"),
        ],
        promotions=[
            common_pb2.Promotion(rule="spring", item_ids=["garden-1", "toys-1"], share=0.2)
        ],
    )
    rec = await fleet.recommend(limit=4)

    by_id = {item.item_id: item for item in rec.items}
    assert by_id["garden-1"].sources == ["als", "buy_again"]  # most confident first
    assert by_id["garden-1"].rules == ["garden-week", "spring"]  # once each
    assert by_id["garden-8"].sources == ["rule"]
    assert by_id["garden-8"].rules == ["hero"]
    assert by_id["garden-3"].sources == ["als"] and by_id["garden-3"].rules == []
