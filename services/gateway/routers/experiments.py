"""Experiments: rankers against each other on shares of a placement's live traffic.

The ranking service owns experiments (DESIGN.md): it validates them, assigns members by
hash and serves each member their variant's ranker; the gateway checks the key (admin) and
shapes the answers (docs/models.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.auth import require
from services.gateway.bodies import model_body, read_model, read_optional_model
from services.gateway.calls import call
from services.gateway.deps import ClientsDep
from services.gateway.responses import errors
from services.gateway.routing import AllowingRoute
from services.gen.recofleet.analytics.v1 import analytics_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2

router = APIRouter(prefix="/v1/experiments", tags=["experiments"], route_class=AllowingRoute)

# Starting loads and probes every variant's ranker: a large model takes seconds.
DEADLINE_S = 30.0
NAME = r"^[^\x00-\x1f\x7f]+$"
Metric = Literal["ctr", "add_to_cart_rate", "conversion_rate", "revenue_per_member"]
Guardrail = Literal["latency_p99_ms", "refund_rate", "ctr", "add_to_cart_rate", "conversion_rate"]
ExperimentId = Annotated[
    str, Path(pattern=r"^[0-9A-Za-z._-]+$", max_length=64, description="The experiment's id")
]
STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
}
UNAVAILABLE = "The ranking service is unavailable: nothing was changed, retry."
NOT_FOUND = {404: "No experiment with that id."}
REFUSED = {
    409: "Not allowed from the experiment's status, another experiment runs on the placement, "
    "or a variant's ranker failed its probe (the detail says which and why)."
}


class VariantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=NAME, examples=["treatment"])
    ranker: str = Field(
        min_length=1, max_length=64, description="A registered ranker (`GET /v1/models`)."
    )
    ranker_version: str | None = Field(
        default=None, max_length=64, description="One of its versions; none: its current one."
    )
    share: float = Field(
        gt=0, le=1, description="Share of the placement's traffic; the shares sum to at most 1."
    )


class ExperimentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=NAME)
    placement: str = Field(min_length=1, max_length=64, pattern=NAME, examples=["home"])
    variants: list[VariantIn] = Field(min_length=2, max_length=10)
    primary_metric: Metric = "ctr"
    guardrails: list[Guardrail] = Field(default_factory=list, max_length=10)
    control: str | None = Field(
        default=None, max_length=64, description="The control variant; none: the first."
    )


class SharesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    shares: dict[str, Annotated[float, Field(gt=0, le=1)]] = Field(
        description="Every variant's new share. Once the experiment has run, only its coverage "
        "may change (every share scaled alike), so that nobody changes variant.",
        examples=[{"control": 0.5, "treatment": 0.5}],
    )


class StopIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    winner: str | None = Field(
        default=None, max_length=64, description="The variant whose ranker becomes active."
    )


class VariantOut(BaseModel):
    name: str
    ranker: str
    ranker_version: str | None
    share: float


class ExperimentOut(BaseModel):
    experiment_id: str
    name: str
    placement: str
    variants: list[VariantOut]
    control: str
    primary_metric: str
    guardrails: list[str]
    status: Literal["draft", "running", "paused", "stopped"]
    created_at: datetime | None
    started_at: datetime | None
    stopped_at: datetime | None
    winner: str | None

    @classmethod
    def of(cls, e: ranking_pb2.Experiment) -> ExperimentOut:
        return cls(
            experiment_id=e.experiment_id,
            name=e.name,
            placement=e.placement,
            variants=[
                VariantOut(
                    name=v.name,
                    ranker=v.ranker,
                    ranker_version=v.ranker_version or None,
                    share=v.share,
                )
                for v in e.variants
            ],
            control=e.control,
            primary_metric=e.primary_metric,
            guardrails=list(e.guardrails),
            status=e.status,  # type: ignore[arg-type]
            created_at=_instant(e.created_at),
            started_at=_instant(e.started_at),
            stopped_at=_instant(e.stopped_at),
            winner=e.winner or None,
        )


class ExperimentsOut(BaseModel):
    experiments: list[ExperimentOut] = Field(description="Oldest first.")


async def _call(method: Any, request: Any, service: str = "ranking") -> Any:
    return await call(method, request, timeout=DEADLINE_S, statuses=STATUS, service=service)


@router.post(
    "",
    operation_id="create_experiment",
    dependencies=[require("admin")],
    status_code=201,
    response_model=ExperimentOut,
    responses={
        201: {"description": "The experiment, a draft until started."},
        **errors(400, 413, 415, 422, 503, descriptions={503: UNAVAILABLE}),
    },
    openapi_extra=model_body(ExperimentIn, "The experiment: placement, variants and shares."),
)
async def create_experiment(request: Request, clients: ClientsDep) -> ExperimentOut:
    """A new experiment, as a draft: `POST /v1/experiments/{id}/start` starts it."""
    body = await read_model(request, ExperimentIn)
    message = ranking_pb2.Experiment(
        name=body.name,
        placement=body.placement,
        variants=[
            ranking_pb2.Variant(
                name=v.name, ranker=v.ranker, ranker_version=v.ranker_version or "", share=v.share
            )
            for v in body.variants
        ],
        primary_metric=body.primary_metric,
        guardrails=body.guardrails,
        control=body.control or "",
    )
    return ExperimentOut.of(await _call(clients.ranking.CreateExperiment, message))


@router.get(
    "",
    operation_id="list_experiments",
    dependencies=[require("admin")],
    response_model=ExperimentsOut,
    responses={200: {"description": "Every experiment."}, **errors(503)},
)
async def list_experiments(clients: ClientsDep) -> ExperimentsOut:
    reply = await _call(clients.ranking.ListExperiments, ranking_pb2.ListExperimentsRequest())
    return ExperimentsOut(experiments=[ExperimentOut.of(e) for e in reply.experiments])


@router.get(
    "/{experiment_id}",
    operation_id="get_experiment",
    dependencies=[require("admin")],
    response_model=ExperimentOut,
    responses={
        200: {"description": "The experiment."},
        **errors(404, 422, 503, descriptions=NOT_FOUND),
    },
)
async def get_experiment(experiment_id: ExperimentId, clients: ClientsDep) -> ExperimentOut:
    request = ranking_pb2.GetExperimentRequest(experiment_id=experiment_id)
    return ExperimentOut.of(await _call(clients.ranking.GetExperiment, request))


@router.put(
    "/{experiment_id}/shares",
    operation_id="set_experiment_shares",
    dependencies=[require("admin")],
    response_model=ExperimentOut,
    responses={
        200: {"description": "The experiment with its new shares, in effect within a second."},
        **errors(400, 404, 409, 413, 415, 422, 503, descriptions={**NOT_FOUND, **REFUSED}),
    },
    openapi_extra=model_body(SharesIn, "Every variant's new share (ramping)."),
)
async def set_shares(
    experiment_id: ExperimentId, request: Request, clients: ClientsDep
) -> ExperimentOut:
    """Ramp an experiment: a pilot at 5% + 5%, then 50% + 50%, moves nobody already in it."""
    body = await read_model(request, SharesIn)
    message = ranking_pb2.SetSharesRequest(experiment_id=experiment_id, shares=body.shares)
    return ExperimentOut.of(await _call(clients.ranking.SetShares, message))


def _transition(action: Literal["start", "pause"], summary: str) -> None:
    async def change(experiment_id: ExperimentId, clients: ClientsDep) -> ExperimentOut:
        message = ranking_pb2.ChangeExperimentRequest(experiment_id=experiment_id, action=action)
        return ExperimentOut.of(await _call(clients.ranking.ChangeExperiment, message))

    change.__doc__ = summary
    router.post(
        f"/{{experiment_id}}/{action}",
        operation_id=f"{action}_experiment",
        dependencies=[require("admin")],
        response_model=ExperimentOut,
        responses={
            200: {"description": "The experiment after the change, in effect within a second."},
            **errors(404, 409, 422, 503, descriptions={**NOT_FOUND, **REFUSED}),
        },
    )(change)


_transition(
    "start",
    "Start (or resume) the experiment: every variant's ranker is loaded and probed first.",
)
_transition("pause", "Pause it: members get the active ranker until it is started again.")


STOP_BODY = model_body(StopIn, 'Optional: `{"winner": "treatment"}` activates its ranker.')
STOP_BODY["requestBody"]["required"] = False


@router.post(
    "/{experiment_id}/stop",
    operation_id="stop_experiment",
    dependencies=[require("admin")],
    response_model=ExperimentOut,
    responses={
        200: {"description": "The stopped experiment; the winner's ranker is active."},
        **errors(400, 404, 409, 413, 415, 422, 503, descriptions={**NOT_FOUND, **REFUSED}),
    },
    openapi_extra=STOP_BODY,
)
async def stop_experiment(
    experiment_id: ExperimentId, request: Request, clients: ClientsDep
) -> ExperimentOut:
    """Stop it for good, optionally naming the winner, whose ranker becomes the active one."""
    body = await read_optional_model(request, StopIn)
    message = ranking_pb2.ChangeExperimentRequest(
        experiment_id=experiment_id, action="stop", winner=body.winner or ""
    )
    return ExperimentOut.of(await _call(clients.ranking.ChangeExperiment, message))


class EstimateOut(BaseModel):
    value: float
    low: float
    high: float
    n: int = Field(description="Members behind it.")

    @classmethod
    def of(cls, e: analytics_pb2.Estimate) -> EstimateOut:
        return cls(value=e.value, low=e.low, high=e.high, n=e.n)


class DifferenceOut(BaseModel):
    metric: str
    control: EstimateOut
    treatment: EstimateOut
    absolute: float = Field(description="Treatment minus control.")
    low: float
    high: float
    relative: float | None = Field(description="Treatment / control - 1; null when control is 0.")
    p_value: float
    method: str = Field(description="The test used, by name.")
    significant: bool
    note: str | None
    variance_reduction: float | None = Field(
        description="CUPED: the share of the variance pre-experiment spend explained."
    )

    @classmethod
    def of(cls, d: analytics_pb2.Difference) -> DifferenceOut:
        return cls(
            metric=d.metric,
            control=EstimateOut.of(d.control),
            treatment=EstimateOut.of(d.treatment),
            absolute=d.absolute,
            low=d.low,
            high=d.high,
            relative=d.relative if d.HasField("relative") else None,
            p_value=d.p_value,
            method=d.method,
            significant=d.significant,
            note=d.note or None,
            variance_reduction=(d.variance_reduction if d.HasField("variance_reduction") else None),
        )


class VariantReportOut(BaseModel):
    name: str
    members: int
    impressions: int
    clicks: int
    carts: int
    purchases: int
    revenue: float
    ctr: EstimateOut
    add_to_cart_rate: EstimateOut
    conversion_rate: EstimateOut
    revenue_per_member: EstimateOut
    differences: list[DifferenceOut] = Field(description="Against the control; none for it.")
    refunded: float = Field(description="Attributed revenue refunds reversed (net of `revenue`).")
    refund_rate: EstimateOut = Field(
        description="Refunded attributed revenue / attributed revenue before refunds."
    )
    latency_impressions: int = Field(description="Impressions that carry a serving latency.")
    latency_p50_ms: float | None = Field(
        description="Serving latency's median over those impressions (nearest rank); null: none."
    )
    latency_p99_ms: float | None = Field(
        description="Its 99th percentile (nearest rank); null: none."
    )


class GuardrailOut(BaseModel):
    metric: str
    variant: str = Field(description="The variant judged against the control.")
    control: float | None = Field(description="The control's figure (ms for latency).")
    treatment: float | None = Field(description="The variant's figure.")
    relative: float | None = Field(description="Treatment / control - 1.")
    difference: DifferenceOut | None = Field(
        description="Rates: the difference with its interval and test; null for latency."
    )
    breached: bool
    worse: Literal["lower", "higher"] = Field(description="Which way is worse.")
    rule: str = Field(description="When it is breached, in words.")
    note: str | None = Field(description="Why it could not be judged, if it could not.")

    @classmethod
    def of(cls, g: analytics_pb2.Guardrail) -> GuardrailOut:
        return cls(
            metric=g.metric,
            variant=g.variant,
            control=g.control if g.HasField("control") else None,
            treatment=g.treatment if g.HasField("treatment") else None,
            relative=g.relative if g.HasField("relative") else None,
            difference=DifferenceOut.of(g.difference) if g.HasField("difference") else None,
            breached=g.breached,
            worse=g.worse,  # type: ignore[arg-type]
            rule=g.rule,
            note=g.note or None,
        )


class SampleRatioOut(BaseModel):
    chi2: float
    p_value: float
    flagged: bool = Field(description="The split is broken: trust no difference.")
    expected: dict[str, float]


class ReportOut(BaseModel):
    experiment: ExperimentOut
    warnings: list[str] = Field(description="What to read first (a broken split, too few members).")
    variants: list[VariantReportOut]
    guardrails: list[GuardrailOut] = Field(
        description="Each of the experiment's guardrails for every non-control variant."
    )
    sample_ratio: SampleRatioOut
    confidence: float
    as_of: datetime | None
    attribution: str = Field(description="How outcomes were attributed to impressions.")


@router.get(
    "/{experiment_id}/report",
    operation_id="get_experiment_report",
    dependencies=[require("admin")],
    response_model=ReportOut,
    responses={
        200: {"description": "Per variant figures with intervals and tests against the control."},
        **errors(404, 422, 503, descriptions=NOT_FOUND),
    },
)
async def experiment_report(
    experiment_id: ExperimentId,
    clients: ClientsDep,
    confidence: Annotated[float, Query(gt=0.5, lt=1.0)] = 0.95,
) -> ReportOut:
    """Members, impressions, CTR, add-to-cart, conversion and refund rates and revenue per
    member per variant, each with its interval, and its serving latency's p50 and p99; each
    variant against the control with the test named; the sample-ratio check; revenue per
    member with CUPED (pre-experiment spend) beside the raw figure; the experiment's
    guardrails, a breached one also among the warnings."""
    request = ranking_pb2.GetExperimentRequest(experiment_id=experiment_id)
    experiment = await _call(clients.ranking.GetExperiment, request)
    asked = analytics_pb2.ExperimentReportRequest(
        experiment_id=experiment.experiment_id,
        variants=[
            analytics_pb2.ReportVariant(name=v.name, share=v.share) for v in experiment.variants
        ],
        control=experiment.control,
        started_at=experiment.started_at,
        stopped_at=experiment.stopped_at,
        confidence=confidence,
        guardrails=experiment.guardrails,
    )
    report = await _call(clients.analytics.GetExperimentReport, asked, "analytics")
    return ReportOut(
        experiment=ExperimentOut.of(experiment),
        warnings=list(report.warnings),
        variants=[_variant_report(v) for v in report.variants],
        guardrails=[GuardrailOut.of(g) for g in report.guardrails],
        sample_ratio=SampleRatioOut(
            chi2=report.sample_ratio.chi2,
            p_value=report.sample_ratio.p_value,
            flagged=report.sample_ratio.flagged,
            expected=dict(report.sample_ratio.expected),
        ),
        confidence=report.confidence,
        as_of=_instant(report.as_of),
        attribution=report.attribution,
    )


def _variant_report(v: analytics_pb2.VariantFigures) -> VariantReportOut:
    return VariantReportOut(
        name=v.name,
        members=v.members,
        impressions=v.impressions,
        clicks=v.clicks,
        carts=v.carts,
        purchases=v.purchases,
        revenue=v.revenue,
        ctr=EstimateOut.of(v.ctr),
        add_to_cart_rate=EstimateOut.of(v.add_to_cart_rate),
        conversion_rate=EstimateOut.of(v.conversion_rate),
        revenue_per_member=EstimateOut.of(v.revenue_per_member),
        differences=[DifferenceOut.of(d) for d in v.differences],
        refunded=v.refunded,
        refund_rate=EstimateOut.of(v.refund_rate),
        latency_impressions=v.latency_impressions,
        latency_p50_ms=v.latency_p50_ms if v.HasField("latency_p50_ms") else None,
        latency_p99_ms=v.latency_p99_ms if v.HasField("latency_p99_ms") else None,
    )


def _instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
