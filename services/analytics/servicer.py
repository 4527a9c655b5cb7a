"""gRPC face of analytics: translate an experiment report and a campaign's outcomes between
protobuf and the domain."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from services.analytics import campaigns
from services.analytics.attribution import describe
from services.analytics.campaigns import CampaignOutcomes, GroupOutcome, campaign_outcomes
from services.analytics.reports import (
    GUARDRAILS,
    ExperimentReport,
    GuardrailCheck,
    VariantReport,
    report,
)
from services.analytics.settings import AnalyticsSettings
from services.analytics.stats import Difference, Estimate, SrmCheck
from services.analytics.store import AnalyticsStore
from services.common.clock import Clock
from services.common.events import MAX_ID_LENGTH, check_member_id
from services.gen.recofleet.analytics.v1 import analytics_pb2, analytics_pb2_grpc

DEFAULT_CONFIDENCE = 0.95
# A campaign's window: ten years is already beyond any shop's memory of a campaign.
MAX_WINDOW_DAYS = 3650.0


class InvalidRequest(ValueError):
    """A report request that cannot be answered; the message names the field."""


@dataclass(frozen=True)
class ReportRequest:
    experiment_id: str
    shares: dict[str, float]
    control: str
    started_at: datetime | None
    stopped_at: datetime | None
    confidence: float
    # The experiment's guardrails, each once, in the order it names them.
    guardrails: tuple[str, ...] = ()


def read_request(request: analytics_pb2.ExperimentReportRequest) -> ReportRequest:
    """The request checked, with its defaults; InvalidRequest naming the field otherwise."""
    problem = check_member_id(request.experiment_id, "experiment_id")
    if problem:
        raise InvalidRequest(problem)
    if not request.variants:
        raise InvalidRequest("variants: at least one variant with its share is required")
    shares: dict[str, float] = {}
    for index, variant in enumerate(request.variants):
        where = f"variants[{index}]"
        problem = check_member_id(variant.name, f"{where}.name")
        if problem:
            raise InvalidRequest(problem)
        if variant.name in shares:
            raise InvalidRequest(f"{where}.name: '{variant.name}' is named twice")
        if not (math.isfinite(variant.share) and variant.share > 0):
            raise InvalidRequest(f"{where}.share: must be a positive number, not {variant.share}")
        shares[variant.name] = variant.share
    control = request.control or request.variants[0].name
    if control not in shares:
        raise InvalidRequest(f"control: no variant '{control}'; variants: {list(shares)}")
    confidence = request.confidence or DEFAULT_CONFIDENCE
    if not 0 < confidence < 1:
        raise InvalidRequest(f"confidence: must be between 0 and 1, not {confidence}")
    started_at = _instant(request.started_at, "started_at")
    stopped_at = _instant(request.stopped_at, "stopped_at")
    if started_at and stopped_at and stopped_at <= started_at:
        raise InvalidRequest("stopped_at: must be after started_at")
    return ReportRequest(
        request.experiment_id,
        shares,
        control,
        started_at,
        stopped_at,
        confidence,
        _guardrails(request.guardrails),
    )


def _guardrails(asked: Sequence[str]) -> tuple[str, ...]:
    for index, name in enumerate(asked):
        if name not in GUARDRAILS:
            raise InvalidRequest(
                f"guardrails[{index}]: unknown guardrail '{name[:MAX_ID_LENGTH]}'; "
                f"known: {list(GUARDRAILS)}"
            )
    return tuple(dict.fromkeys(asked))


@dataclass(frozen=True)
class OutcomesRequest:
    campaign_id: str
    confidence: float
    window_days: float


def read_outcomes_request(request: analytics_pb2.CampaignOutcomesRequest) -> OutcomesRequest:
    """The request checked, with its defaults; InvalidRequest naming the field otherwise."""
    problem = check_member_id(request.campaign_id, "campaign_id")
    if problem:
        raise InvalidRequest(problem)
    confidence = request.confidence or DEFAULT_CONFIDENCE
    if not 0 < confidence < 1:
        raise InvalidRequest(f"confidence: must be between 0 and 1, not {confidence}")
    window_days = request.window_days or campaigns.DEFAULT_WINDOW_DAYS
    if not (math.isfinite(window_days) and 0 < window_days <= MAX_WINDOW_DAYS):
        raise InvalidRequest(
            f"window_days: must be more than 0 and at most {MAX_WINDOW_DAYS:g}, not {window_days}"
        )
    return OutcomesRequest(request.campaign_id, confidence, window_days)


def _instant(text: str, field: str) -> datetime | None:
    if not text:
        return None
    if len(text) > MAX_ID_LENGTH:
        raise InvalidRequest(f"{field}: not an ISO 8601 instant")
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"{field}: '{text}' is not an ISO 8601 instant") from None
    # A naive instant is read as UTC, as events' timestamps are.
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, store: AnalyticsStore, settings: AnalyticsSettings, clock: Clock) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._attribution = describe(timedelta(hours=settings.attribution_window_hours))

    async def GetExperimentReport(
        self, request: analytics_pb2.ExperimentReportRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.ExperimentReport:
        try:
            asked = read_request(request)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        as_of = self._clock.now()
        # Aggregates over every member of the experiment, then the statistics: off the loop.
        done = await asyncio.to_thread(self._report, asked, as_of)
        return report_message(done, as_of, self._attribution)

    async def GetCampaignOutcomes(
        self, request: analytics_pb2.CampaignOutcomesRequest, context: grpc.aio.ServicerContext
    ) -> analytics_pb2.CampaignOutcomes:
        try:
            asked = read_outcomes_request(request)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        as_of = self._clock.now()
        done = await asyncio.to_thread(self._outcomes, asked, as_of)
        return outcomes_message(done, as_of, campaigns.describe(asked.window_days))

    def _outcomes(self, asked: OutcomesRequest, as_of: datetime) -> CampaignOutcomes:
        window = timedelta(days=asked.window_days)
        figures = self._store.campaign_figures(asked.campaign_id, window, as_of)
        return campaign_outcomes(
            asked.campaign_id,
            figures,
            asked.confidence,
            asked.window_days,
            min_members=self._settings.min_members_per_variant,
        )

    def _report(self, asked: ReportRequest, as_of: datetime) -> ExperimentReport:
        stopped_at = asked.stopped_at or as_of
        figures = self._store.experiment_figures(asked.experiment_id, asked.started_at, stopped_at)
        return report(
            asked.experiment_id,
            asked.shares,
            asked.control,
            asked.started_at,
            asked.stopped_at,
            asked.confidence,
            figures,
            min_members=self._settings.min_members_per_variant,
            guardrails=asked.guardrails,
            latency_tolerance=self._settings.latency_guardrail_tolerance,
        )


def report_message(
    done: ExperimentReport, as_of: datetime, attribution: str
) -> analytics_pb2.ExperimentReport:
    return analytics_pb2.ExperimentReport(
        experiment_id=done.experiment_id,
        variants=[_variant(v) for v in done.variants],
        sample_ratio=_sample_ratio(done.sample_ratio),
        confidence=done.confidence,
        warnings=list(done.warnings),
        as_of=as_of.isoformat(),
        attribution=attribution,
        guardrails=[_guardrail(g) for g in done.guardrails],
    )


def outcomes_message(
    done: CampaignOutcomes, as_of: datetime, attribution: str
) -> analytics_pb2.CampaignOutcomes:
    return analytics_pb2.CampaignOutcomes(
        campaign_id=done.campaign_id,
        groups=[_group(g) for g in done.groups],
        differences=[_difference(metric, d) for metric, d in done.differences.items()],
        exposures=done.exposures,
        coupon_orders=done.coupon_orders,
        confidence=done.confidence,
        warnings=list(done.warnings),
        as_of=as_of.isoformat(),
        attribution=attribution,
    )


def _group(group: GroupOutcome) -> analytics_pb2.CampaignGroup:
    return analytics_pb2.CampaignGroup(
        group=group.name,
        members=group.members,
        converters=group.converters,
        conversion_rate=_estimate(group.conversion_rate),
        revenue_per_member=_estimate(group.revenue_per_member),
        revenue=group.revenue,
    )


def _variant(variant: VariantReport) -> analytics_pb2.VariantFigures:
    return analytics_pb2.VariantFigures(
        name=variant.name,
        members=variant.members,
        impressions=variant.impressions,
        clicks=variant.clicks,
        carts=variant.carts,
        purchases=variant.purchases,
        revenue=variant.revenue,
        ctr=_estimate(variant.ctr),
        add_to_cart_rate=_estimate(variant.add_to_cart_rate),
        conversion_rate=_estimate(variant.conversion_rate),
        revenue_per_member=_estimate(variant.revenue_per_member),
        differences=[_difference(metric, d) for metric, d in variant.differences.items()],
        refunded=variant.refunded,
        refund_rate=_estimate(variant.refund_rate),
        latency_impressions=variant.latency_impressions,
        latency_p50_ms=variant.latency_p50_ms,
        latency_p99_ms=variant.latency_p99_ms,
    )


def _guardrail(check: GuardrailCheck) -> analytics_pb2.Guardrail:
    message = analytics_pb2.Guardrail(
        metric=check.metric,
        variant=check.variant,
        control=check.control,
        treatment=check.treatment,
        relative=check.relative,
        breached=check.breached,
        worse=check.worse,
        rule=check.rule,
        note=check.note or "",
        tolerance=check.tolerance,
    )
    if check.difference is not None:
        message.difference.CopyFrom(_difference(check.metric, check.difference))
    return message


def _estimate(estimate: Estimate) -> analytics_pb2.Estimate:
    return analytics_pb2.Estimate(
        value=estimate.value, low=estimate.low, high=estimate.high, n=estimate.n
    )


def _difference(metric: str, difference: Difference) -> analytics_pb2.Difference:
    message = analytics_pb2.Difference(
        metric=metric,
        control=_estimate(difference.control),
        treatment=_estimate(difference.treatment),
        absolute=difference.absolute,
        low=difference.low,
        high=difference.high,
        p_value=difference.p_value,
        method=difference.method,
        significant=difference.significant,
        note=difference.note or "",
    )
    if difference.relative is not None:
        message.relative = difference.relative
    if difference.variance_reduction is not None:
        message.variance_reduction = difference.variance_reduction
    return message


def _sample_ratio(check: SrmCheck) -> analytics_pb2.SampleRatio:
    return analytics_pb2.SampleRatio(
        chi2=check.chi2, p_value=check.p_value, flagged=check.flagged, expected=check.expected
    )
