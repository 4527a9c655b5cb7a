"""Experiment guardrails: per variant serving latency percentiles and refund rate, each
guardrail the experiment names judged for every non-control variant, a breach among the
warnings; through the servicer's messages and the gateway's report route."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from services.analytics.reports import (
    ExperimentFigures,
    ExperimentReport,
    GuardrailCheck,
    Latencies,
    MemberFigures,
    report,
)
from services.analytics.servicer import (
    AnalyticsServicer,
    InvalidRequest,
    read_request,
    report_message,
)
from services.analytics.settings import AnalyticsSettings
from services.analytics.stats import percentile
from services.analytics.store import SqlAnalyticsStore
from services.common.clock import Clock
from services.common.events import Event
from services.gen.recofleet.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from services.gen.recofleet.ranking.v1 import ranking_pb2
from tests.unit.test_gateway_http import ADMIN_KEY, app_with, memory_key_store, settings

SHARES = {"control": 0.5, "treatment": 0.5}
AT = datetime(2026, 12, 1, 12, tzinfo=UTC)
STARTED = AT - timedelta(days=1)


def shoppers(
    rng: np.random.Generator, n: int, *, refund_chance: float = 0.05, ctr: float = 0.05
) -> MemberFigures:
    """n members: 10 impressions each, binomial clicks, a third buying around 50, each buyer
    returning everything with `refund_chance`."""
    impressions = np.full(n, 10)
    clicks = rng.binomial(impressions, ctr)
    bought = rng.random(n) < 1 / 3
    gross = np.where(bought, rng.gamma(4.0, 12.5, n), 0.0)
    refunded = np.where(rng.random(n) < refund_chance, gross, 0.0)
    rows = zip(
        impressions,
        clicks,
        np.zeros(n),
        bought,
        gross - refunded,
        np.zeros(n),
        refunded,
        strict=True,
    )
    return MemberFigures.of(rows)


def run(
    figures: dict[str, MemberFigures],
    guardrails: Sequence[str],
    latencies: dict[str, Latencies] | None = None,
    shares: dict[str, float] = SHARES,
    **options: Any,
) -> ExperimentReport:
    found = ExperimentFigures(figures, latencies=latencies or {})
    return report(
        "exp-1", shares, "control", None, None, 0.95, found, guardrails=guardrails, **options
    )


def checked(done: ExperimentReport, metric: str, variant: str = "treatment") -> GuardrailCheck:
    (check,) = [g for g in done.guardrails if (g.metric, g.variant) == (metric, variant)]
    return check


def latencies(*pairs: tuple[float, int]) -> Latencies:
    return Latencies.of(pairs)


def test_percentiles_are_the_nearest_rank_of_what_was_seen() -> None:
    # 100 observations: the p99 is the 99th smallest (20), where numpy interpolates 24.8.
    values, counts = [500.0, 10.0, 20.0], [1, 98, 1]

    assert percentile(values, counts, 0.5) == 10.0
    assert percentile(values, counts, 0.99) == 20.0
    assert percentile(values, counts, 1.0) == 500.0
    # Of 50 observations, the p99 is the largest.
    assert percentile([1.0, 2.0], [49, 1], 0.99) == 2.0
    assert percentile([3.0], [7], 0.07) == 3.0
    assert percentile([], [], 0.99) is None
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], [1], 0)


def test_each_variant_has_its_latency_percentiles_and_refund_rate() -> None:
    # Gross attributed revenue 100 + 50 + 0 + 50 = 200, of which 10 + 40 were refunded.
    control = MemberFigures.of(
        [
            (5, 1, 0, 1, 90.0, 0.0, 10.0),
            (5, 0, 0, 1, 50.0, 0.0, 0.0),
            (5, 0, 0, 0, 0.0, 0.0, 0.0),
            (5, 0, 0, 1, 10.0, 0.0, 40.0),
        ]
    )
    treatment = MemberFigures.of([(5, 1, 0, 1, 30.0, 0.0, 0.0), (5, 0, 0, 0, 0.0, 0.0, 0.0)])
    timed = {"control": latencies((10.0, 98), (20.0, 1), (500.0, 1)), "treatment": latencies()}

    done = run({"control": control, "treatment": treatment}, (), timed)

    first, second = done.variants
    assert first.refund_rate.value == pytest.approx(0.25) and first.refund_rate.n == 4
    assert first.refund_rate.low < 0.25 < first.refund_rate.high
    assert (first.refunded, first.revenue) == (50.0, 150.0)
    assert (first.latency_impressions, first.latency_p50_ms, first.latency_p99_ms) == (
        100,
        10.0,
        20.0,
    )
    assert second.refund_rate.value == 0.0
    assert (second.latency_impressions, second.latency_p50_ms, second.latency_p99_ms) == (
        0,
        None,
        None,
    )
    assert done.guardrails == ()


def test_a_treatment_refunding_clearly_more_breaches_with_a_warning() -> None:
    rng = np.random.default_rng(21)
    figures = {
        "control": shoppers(rng, 3_000, refund_chance=0.05),
        "treatment": shoppers(rng, 3_000, refund_chance=0.25),
    }

    done = run(figures, ["refund_rate"])

    check = checked(done, "refund_rate")
    assert check.breached and check.worse == "higher" and check.note is None
    assert check.difference is not None and check.difference.low > 0
    assert check.control == pytest.approx(0.05, abs=0.02)
    assert check.treatment == pytest.approx(0.25, abs=0.03)
    assert check.control == done.variants[0].refund_rate.value
    (warning,) = done.warnings
    assert warning.startswith("guardrail refund_rate breached by treatment: ")
    assert "in control" in warning and "higher is worse" in warning


def test_an_equal_refund_rate_is_not_breached() -> None:
    rng = np.random.default_rng(22)
    figures = {
        "control": shoppers(rng, 3_000, refund_chance=0.1),
        "treatment": shoppers(rng, 3_000, refund_chance=0.1),
    }

    done = run(figures, ["refund_rate"])

    check = checked(done, "refund_rate")
    assert check.difference is not None and check.difference.low < 0 < check.difference.high
    assert not check.breached and done.warnings == ()


def test_a_rate_is_breached_only_when_significantly_worse_in_its_direction() -> None:
    rng = np.random.default_rng(23)
    control = shoppers(rng, 3_000, ctr=0.10)
    lower, higher = shoppers(rng, 3_000, ctr=0.07), shoppers(rng, 3_000, ctr=0.13)
    shares = {"control": 1 / 3, "lower": 1 / 3, "higher": 1 / 3}

    done = run({"control": control, "lower": lower, "higher": higher}, ["ctr"], shares=shares)

    assert [(g.metric, g.variant) for g in done.guardrails] == [("ctr", "lower"), ("ctr", "higher")]
    assert checked(done, "ctr", "lower").breached
    assert checked(done, "ctr", "lower").worse == "lower"
    # Significantly different, but better: no breach.
    assert checked(done, "ctr", "higher").difference.significant  # type: ignore[union-attr]
    assert not checked(done, "ctr", "higher").breached
    assert [w.split(":")[0] for w in done.warnings] == ["guardrail ctr breached by lower"]


def _timed(p99_ms: float) -> Latencies:
    return latencies((40.0, 90), (p99_ms, 10))


def _two(rng: np.random.Generator) -> dict[str, MemberFigures]:
    return {"control": shoppers(rng, 200), "treatment": shoppers(rng, 200)}


@pytest.mark.parametrize(
    ("treatment_p99", "tolerance", "breached"),
    [(125.0, 0.2, True), (115.0, 0.2, False), (120.0, 0.2, False), (125.0, 0.3, False)],
)
def test_latency_is_breached_past_the_tolerance(
    treatment_p99: float, tolerance: float, breached: bool
) -> None:
    timed = {"control": _timed(100.0), "treatment": _timed(treatment_p99)}

    done = run(
        _two(np.random.default_rng(24)),
        ["latency_p99_ms"],
        timed,
        latency_tolerance=tolerance,
        min_members=1,
    )

    check = checked(done, "latency_p99_ms")
    assert (check.control, check.treatment, check.breached) == (100.0, treatment_p99, breached)
    assert check.relative == pytest.approx(treatment_p99 / 100 - 1)
    assert check.difference is None and check.worse == "higher"
    assert check.tolerance == tolerance and f"{tolerance * 100:g}%" in check.rule
    breaches = [w for w in done.warnings if w.startswith("guardrail latency_p99_ms breached")]
    assert len(breaches) == breached
    if breached:
        assert breaches[0] == (
            "guardrail latency_p99_ms breached by treatment: p99 125.0 ms against 100.0 ms in "
            "control (+25%, more than the 20% allowed)"
        )


def test_latency_not_recorded_is_noted_not_breached() -> None:
    done = run(
        _two(np.random.default_rng(25)),
        ["latency_p99_ms"],
        {"treatment": _timed(900.0)},
        min_members=1,
    )

    check = checked(done, "latency_p99_ms")
    assert not check.breached and check.control is None and check.treatment == 900.0
    assert check.note == "no serving latency recorded in 'control': nothing to compare"
    assert done.warnings == ()


def test_a_guardrail_not_asked_for_is_not_reported() -> None:
    rng = np.random.default_rng(26)
    figures = {
        "control": shoppers(rng, 3_000, refund_chance=0.05),
        "treatment": shoppers(rng, 3_000, refund_chance=0.25),
    }
    timed = {"control": _timed(100.0), "treatment": _timed(300.0)}

    done = run(figures, ["conversion_rate", "conversion_rate"], timed)

    assert [g.metric for g in done.guardrails] == ["conversion_rate"]
    assert done.warnings == ()
    assert not run(figures, [], timed).guardrails
    with pytest.raises(ValueError, match="unknown guardrails \\['latency'\\]"):
        run(figures, ["latency"], timed)


def test_a_breach_follows_a_broken_split_and_precedes_the_other_warnings() -> None:
    rng = np.random.default_rng(27)
    figures = {"control": shoppers(rng, 1_000), "treatment": shoppers(rng, 1_300)}
    timed = {"control": _timed(100.0), "treatment": _timed(300.0)}

    done = run(figures, ["latency_p99_ms"], timed, min_members=1_100)

    assert done.warnings[0].startswith("the split is broken")
    assert done.warnings[1].startswith("guardrail latency_p99_ms breached by treatment")
    assert done.warnings[2].startswith("fewer than 1100 members in 'control'")


def _request(*guardrails: str) -> analytics_pb2.ExperimentReportRequest:
    return analytics_pb2.ExperimentReportRequest(
        experiment_id="exp-1",
        variants=[
            analytics_pb2.ReportVariant(name=name, share=share) for name, share in SHARES.items()
        ],
        guardrails=guardrails,
    )


def test_the_request_names_the_guardrails_once_each_and_refuses_unknown_ones() -> None:
    assert read_request(_request("refund_rate", "ctr", "refund_rate")).guardrails == (
        "refund_rate",
        "ctr",
    )
    assert read_request(_request()).guardrails == ()
    with pytest.raises(InvalidRequest, match=r"^guardrails\[1\]: unknown guardrail 'p99'"):
        read_request(_request("ctr", "p99"))


def test_the_report_message_carries_guardrails_and_the_new_figures() -> None:
    rng = np.random.default_rng(28)
    timed = {"control": _timed(100.0), "treatment": _timed(150.0)}
    done = run(_two(rng), ["latency_p99_ms", "refund_rate"], timed, min_members=1)

    message = report_message(done, AT, "rules")

    latency, refunds = message.guardrails
    assert (latency.metric, latency.variant, latency.breached) == (
        "latency_p99_ms",
        "treatment",
        True,
    )
    assert not latency.HasField("difference") and latency.tolerance == pytest.approx(0.2)
    assert (latency.control, latency.treatment) == (100.0, 150.0)
    assert refunds.HasField("difference") and refunds.difference.metric == "refund_rate"
    assert not refunds.HasField("tolerance") and refunds.worse == "higher"
    control = message.variants[0]
    assert control.latency_p99_ms == 100.0 and control.latency_p50_ms == 40.0
    assert control.latency_impressions == 100
    assert control.refund_rate.value == pytest.approx(done.variants[0].refund_rate.value)
    assert list(message.warnings) == list(done.warnings)


def ev(type_: str, member: str, at: datetime, **fields: Any) -> Event:
    return Event.model_validate({"type": type_, "member_id": member, "timestamp": at, **fields})


def _shop() -> list[Event]:
    """Per variant 4 members, one impression each (treatment's answers took 60 ms, control's
    10 ms) and a purchase of 20.0 of what was shown; one treatment member returns it."""
    events = []
    for variant, latency in (("control", 10.0), ("treatment", 60.0)):
        for i in range(4):
            member, at = f"{variant}-{i}", STARTED + timedelta(hours=1 + i)
            events.append(
                ev(
                    "impression",
                    member,
                    at,
                    recommendation_id=f"r-{member}",
                    items=[{"item_id": "sku-a"}],
                    context={
                        "placement": "home",
                        "variant": variant,
                        "experiment_id": "exp-1",
                        "latency_ms": latency,
                    },
                )
            )
            line = {"item_id": "sku-a", "quantity": 1, "price": 20.0}
            bought = at + timedelta(minutes=5)
            events.append(ev("purchase", member, bought, order_id=f"o-{member}", items=[line]))
    returned = ev("refund", "treatment-0", AT, order_id="o-treatment-0", revenue=20.0)
    return [*events, returned]


class Ranking:
    """Ranking as the report route sees it: the experiment, with its guardrails."""

    async def GetExperiment(
        self, request: ranking_pb2.GetExperimentRequest, timeout: float | None = None
    ) -> ranking_pb2.Experiment:
        return ranking_pb2.Experiment(
            experiment_id=request.experiment_id,
            name="ltr vs blend",
            placement="home",
            variants=[
                ranking_pb2.Variant(name=name, ranker=name, share=share)
                for name, share in SHARES.items()
            ],
            control="control",
            primary_metric="ctr",
            guardrails=["refund_rate", "latency_p99_ms"],
            status="running",
            started_at=STARTED.isoformat(),
        )


class Analytics:
    """The real analytics stub, remembering what it was asked."""

    def __init__(self, stub: analytics_pb2_grpc.AnalyticsServiceStub) -> None:
        self.stub = stub
        self.asked: list[analytics_pb2.ExperimentReportRequest] = []

    async def GetExperimentReport(
        self, request: analytics_pb2.ExperimentReportRequest, timeout: float | None = None
    ) -> analytics_pb2.ExperimentReport:
        self.asked.append(request)
        return await self.stub.GetExperimentReport(request, timeout=timeout)


class Clients:
    def __init__(self, analytics: Analytics) -> None:
        self.ranking = Ranking()
        self.analytics = analytics


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Analytics]]:
    analytics_settings = AnalyticsSettings()
    store = SqlAnalyticsStore.from_url(f"sqlite:///{tmp_path / 'analytics.db'}", analytics_settings)
    store.apply_events(_shop())
    server = grpc.aio.server()
    servicer = AnalyticsServicer(store, analytics_settings, Clock.fixed(AT))
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    analytics = Analytics(analytics_pb2_grpc.AnalyticsServiceStub(channel))
    app = app_with(settings(), Clients(analytics), memory_key_store())  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"x-api-key": ADMIN_KEY},
    ) as http:
        yield http, analytics
    await channel.close()
    await server.stop(None)
    store.close()


async def test_the_gateway_report_shows_the_experiments_guardrails(
    gateway: tuple[httpx.AsyncClient, Analytics],
) -> None:
    http, analytics = gateway

    reply = await http.get("/v1/experiments/exp-1/report")

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert list(analytics.asked[0].guardrails) == ["refund_rate", "latency_p99_ms"]
    control, treatment = body["variants"]
    assert (control["latency_p50_ms"], control["latency_p99_ms"]) == (10.0, 10.0)
    assert (treatment["latency_impressions"], treatment["latency_p99_ms"]) == (4, 60.0)
    assert control["refund_rate"]["value"] == 0.0 and control["refunded"] == 0.0
    # One of four purchases of 20.0 returned whole.
    assert treatment["refund_rate"]["value"] == pytest.approx(0.25)
    assert (treatment["refunded"], treatment["revenue"]) == (20.0, 60.0)
    refunds, latency = body["guardrails"]
    assert (refunds["metric"], refunds["variant"], refunds["worse"]) == (
        "refund_rate",
        "treatment",
        "higher",
    )
    assert refunds["difference"]["metric"] == "refund_rate"
    assert refunds["control"] == 0.0 and refunds["treatment"] == pytest.approx(0.25)
    assert latency["metric"] == "latency_p99_ms" and latency["breached"]
    assert latency["difference"] is None and latency["relative"] == pytest.approx(5.0)
    assert (
        "guardrail latency_p99_ms breached by treatment: p99 60.0 ms against 10.0 ms in control"
        in " ".join(body["warnings"])
    )
