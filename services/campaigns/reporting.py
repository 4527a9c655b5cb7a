"""A campaign's report: its own counters beside analytics' comparison with the control group."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from scipy.stats import norm

from services.campaigns.campaign_store import Spent, StoredCampaign
from services.gen.recofleet.analytics.v1 import analytics_pb2
from services.gen.recofleet.campaigns.v1 import campaigns_pb2

_METRICS = {"conversion_rate": "conversion", "revenue_per_member": "revenue"}


def campaign_report(
    campaign: StoredCampaign,
    audience: int,
    counts: Mapping[tuple[str, str], int],
    spent: Spent,
    outcomes: analytics_pb2.CampaignOutcomes,
    confidence: float,
) -> campaigns_pb2.CampaignReport:
    """Exposures and redemptions from campaigns' store; groups and uplift from analytics;
    ROI = (incremental revenue - cost) / cost, where the incremental revenue is the uplift
    in revenue per member times the members exposed."""
    groups = {g.group: g for g in outcomes.groups}
    exposed = groups["treatment"].members if "treatment" in groups else 0
    held_out = groups["control"].members if "control" in groups else 0
    report = campaigns_pb2.CampaignReport(
        campaign_id=campaign.campaign_id,
        name=campaign.definition.name,
        audience=audience,
        exposures={ch: n for (ch, grp), n in counts.items() if grp == "treatment"},
        members_exposed=exposed,
        members_held_out=held_out,
        redemptions=spent.redemptions,
        redemption_rate=_rate(spent.redemptions, exposed, confidence),
        redeemed_revenue=round(spent.revenue, 2),
        cost=round(spent.cost, 2),
        groups=[_group(g) for g in outcomes.groups],
        confidence=confidence,
        warnings=list(outcomes.warnings),
        as_of=outcomes.as_of or datetime.now(UTC).isoformat(),
    )
    methods = []
    for difference in outcomes.differences:
        name = _METRICS.get(difference.metric)
        if name is None:
            continue
        figure = campaigns_pb2.Figure(
            value=difference.absolute, low=difference.low, high=difference.high
        )
        if name == "conversion":
            report.conversion_uplift.CopyFrom(figure)
            report.conversion_p_value = difference.p_value
        else:
            report.revenue_per_member_uplift.CopyFrom(figure)
            report.revenue_p_value = difference.p_value
            report.incremental_revenue = round(difference.absolute * exposed, 2)
        methods.append(f"{difference.metric}: {difference.method}")
    report.method = "; ".join(methods) or "no comparison: no exposed or held-out members yet"
    if spent.cost > 0 and methods:
        report.roi = round((report.incremental_revenue - spent.cost) / spent.cost, 4)
    return report


def _group(group: analytics_pb2.CampaignGroup) -> campaigns_pb2.GroupFigures:
    return campaigns_pb2.GroupFigures(
        group=group.group,
        members=group.members,
        converters=group.converters,
        conversion_rate=_figure(group.conversion_rate),
        revenue_per_member=_figure(group.revenue_per_member),
        revenue=round(group.revenue, 2),
    )


def _figure(estimate: analytics_pb2.Estimate) -> campaigns_pb2.Figure:
    return campaigns_pb2.Figure(
        value=estimate.value, low=estimate.low, high=estimate.high, n=estimate.n
    )


def _rate(hits: int, n: int, confidence: float) -> campaigns_pb2.Figure:
    """A share with its Wilson score interval."""
    if n <= 0:
        return campaigns_pb2.Figure(n=0)
    z, p = float(norm.ppf(0.5 + confidence / 2)), hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    spread = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return campaigns_pb2.Figure(
        value=p, low=max(0.0, centre - spread), high=min(1.0, centre + spread), n=n
    )
