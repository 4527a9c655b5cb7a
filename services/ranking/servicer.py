"""gRPC face of ranking: rank, the rankers and their activation, the experiments."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import NoReturn, TypeVar

import grpc

from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.ranking.arrangement import Diversify, arrange, arranges
from services.ranking.diversity import capped
from services.ranking.domain import RankerBook, UnknownRanker
from services.ranking.experiments import Experiment, InvalidExperiment, NotAllowed, Variant
from services.ranking.probe import RankerRefused
from services.ranking.rankers import MemberContext
from services.ranking.settings import Diversity
from services.ranking.store import StaleExperiment

T = TypeVar("T")
log = logging.getLogger(__name__)
# Domain refusals -> the status the caller gets (the message is the domain's).
STATUS: dict[type[Exception], grpc.StatusCode] = {
    UnknownRanker: grpc.StatusCode.NOT_FOUND,
    InvalidExperiment: grpc.StatusCode.INVALID_ARGUMENT,
    NotAllowed: grpc.StatusCode.FAILED_PRECONDITION,
    RankerRefused: grpc.StatusCode.FAILED_PRECONDITION,
    StaleExperiment: grpc.StatusCode.ABORTED,
}


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):
    def __init__(self, book: RankerBook, diversity: Mapping[str, Diversity] | None = None) -> None:
        self._book = book
        self._diversity = dict(diversity or {})

    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        try:
            choice = self._book.choose(request.member.member_id, request.placement, request.ranker)
        except (UnknownRanker, RankerRefused) as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        limit = request.limit or len(request.candidates)
        spread = self._diversity.get(request.placement)
        arrangement = request.arrangement if arranges(request.arrangement) else None
        # Under a cap the ranker orders every candidate, so that what the cap moves back
        # is replaced by the next best of other categories; under an arrangement, so that
        # a boost can lift an item from below the limit.
        asked = len(request.candidates) if spread or arrangement is not None else limit
        ranked = choice.ranker.rank(
            member_context(request.member), request.candidates, request.placement, asked
        )
        if arrangement is not None:
            ranked = arrange(ranked, arrangement, limit, _diversify(spread))
        elif spread:
            ranked = capped(ranked, limit, spread.max_per_category)
        log.debug(
            "ranked %d of %d candidates at %s with %s",
            len(ranked),
            len(request.candidates),
            request.placement,
            choice.label,
        )
        return ranking_pb2.RankResponse(
            model=choice.label,
            variant=choice.variant,
            experiment_id=choice.experiment_id,
            items=[
                common_pb2.ScoredItem(
                    item_id=r.item_id, score=r.score, reasons=r.reasons, category=r.category
                )
                for r in ranked
            ],
        )

    async def ListRankers(
        self, request: ranking_pb2.ListRankersRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.ListRankersResponse:
        return await asyncio.to_thread(self._list)

    def _list(self) -> ranking_pb2.ListRankersResponse:
        active = self._book.active_choice().label
        active_name = active.split("@", 1)[0]
        rankers = []
        for kind in sorted(self._book.kinds.values(), key=lambda k: k.name):
            info = ranking_pb2.RankerInfo(
                name=kind.name,
                origin=kind.origin,
                trained=kind.trained,
                active=kind.name == active_name,
                broken_reason=kind.broken,
            )
            if kind.trained:
                store = self._book.model_store(kind.name)
                current, refused = store.current(), store.refused()
                for version in store.versions():
                    meta = store.meta(version)
                    info.versions.append(
                        ranking_pb2.RankerVersion(
                            version=version,
                            trained_at=str(meta.get("trained_at", "")),
                            meta_json=json.dumps(meta, sort_keys=True),
                            current=version == current,
                            refused_reason=refused.get(version, ""),
                        )
                    )
            rankers.append(info)
        return ranking_pb2.ListRankersResponse(rankers=rankers, active=active)

    async def ActivateRanker(
        self, request: ranking_pb2.ActivateRankerRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.ActivateRankerResponse:
        done = await _domain(context, lambda: self._book.activate(request.name, request.version))
        return ranking_pb2.ActivateRankerResponse(
            name=done.activation.ranker,
            version=done.activation.version,
            activated_at=done.activation.activated_at.isoformat(),
            probe_p99_ms=done.probe.p99_ms,
            probe_median_ms=done.probe.median_ms,
        )

    async def CreateExperiment(
        self, request: ranking_pb2.Experiment, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.Experiment:
        variants = [
            Variant(v.name.strip(), v.ranker, v.share, v.ranker_version) for v in request.variants
        ]
        created = await _domain(
            context,
            lambda: self._book.create(
                name=request.name,
                placement=request.placement,
                variants=variants,
                primary_metric=request.primary_metric,
                guardrails=list(request.guardrails),
                control=request.control,
            ),
        )
        return experiment_message(created)

    async def GetExperiment(
        self, request: ranking_pb2.GetExperimentRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.Experiment:
        found = await _domain(context, lambda: self._book.experiment(request.experiment_id))
        return experiment_message(found)

    async def ListExperiments(
        self, request: ranking_pb2.ListExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.ListExperimentsResponse:
        found = await _domain(context, self._book.experiments)
        return ranking_pb2.ListExperimentsResponse(
            experiments=[experiment_message(e) for e in found]
        )

    async def SetShares(
        self, request: ranking_pb2.SetSharesRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.Experiment:
        shares = dict(request.shares)
        changed = await _domain(
            context, lambda: self._book.set_shares(request.experiment_id, shares)
        )
        return experiment_message(changed)

    async def ChangeExperiment(
        self, request: ranking_pb2.ChangeExperimentRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.Experiment:
        changed = await _domain(
            context,
            lambda: self._book.change(request.experiment_id, request.action, request.winner),
        )
        return experiment_message(changed)


def _diversify(spread: Diversity | None) -> Diversify:
    """What an arrangement runs between its promotions and its pins: the placement's cap."""
    if spread is None:
        return lambda items, limit: items[:limit]
    return lambda items, limit: capped(items, limit, spread.max_per_category)


def member_context(member: ranking_pb2.MemberContext) -> MemberContext:
    return MemberContext(
        member_id=member.member_id,
        category_weights=dict(member.category_weights),
        orders=member.orders,
        r_score=member.r_score,
        f_score=member.f_score,
        m_score=member.m_score,
        price_band=member.price_band,
        price_percentile=(member.price_percentile if member.HasField("price_percentile") else None),
        affinities=dict(member.affinities),
        lifecycle=member.lifecycle,
        recent_items=list(member.recent_item_ids),
    )


def experiment_message(experiment: Experiment) -> ranking_pb2.Experiment:
    return ranking_pb2.Experiment(
        experiment_id=experiment.experiment_id,
        name=experiment.name,
        placement=experiment.placement,
        variants=[
            ranking_pb2.Variant(
                name=v.name, ranker=v.ranker, ranker_version=v.ranker_version, share=v.share
            )
            for v in experiment.variants
        ],
        primary_metric=experiment.primary_metric,
        guardrails=list(experiment.guardrails),
        status=experiment.status.value,
        created_at=_instant(experiment.created_at),
        started_at=_instant(experiment.started_at),
        stopped_at=_instant(experiment.stopped_at),
        winner=experiment.winner,
        control=experiment.control_variant,
    )


async def _domain(context: grpc.aio.ServicerContext, call: Callable[[], T]) -> T:
    """`call()` in a worker thread (it reads the store, or loads and probes a model), its
    domain refusals as gRPC statuses."""
    try:
        return await asyncio.to_thread(call)
    except tuple(STATUS) as exc:
        code = next(c for kind, c in STATUS.items() if isinstance(exc, kind))
        await _abort(context, code, str(exc))


async def _abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort() raises")


def _instant(value: datetime | None) -> str:
    return value.isoformat() if value else ""
