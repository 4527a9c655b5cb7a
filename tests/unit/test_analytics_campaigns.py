"""A campaign measured against its control group: exposures kept once, each member in the
group of their first exposure, purchases within the window after it, refunds, coupon
orders, erasure and links, seeded simulations of a known uplift and of A/A campaigns, and
GetCampaignOutcomes end to end over the bus.

The store tests run on SQLite and on PostgreSQL (tests/unit/conftest.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from alembic import command
from scipy import stats
from sqlalchemy import Engine, MetaData, select

from services.analytics.campaigns import (
    CONVERSION_METHOD,
    CampaignFigures,
    CampaignOutcomes,
    GroupMembers,
    GroupOutcome,
    campaign_outcomes,
)
from services.analytics.consumer import analytics_worker
from services.analytics.servicer import AnalyticsServicer
from services.analytics.settings import AnalyticsSettings
from services.analytics.stats import WELCH, proportion_estimate
from services.analytics.store import SqlAnalyticsStore, outcomes
from services.common import dead_letters
from services.common.bus import ALL_TOPICS, EVENTS_TOPIC, EXPOSURES_TOPIC, MEMBERS_TOPIC, Message
from services.common.bus.local_log import LocalLogBus
from services.common.clock import Clock
from services.common.events import Event, event_records, parse_event
from services.common.exposures import Exposure
from services.common.members import Erase, Link, command_message
from services.common.migrations import alembic_config
from services.gen.recofleet.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from services.ingestion.formats import translate

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
DAY = timedelta(days=1)
WINDOW = 30 * DAY
SECRET = b"a test secret of enough length!!"
SETTINGS = AnalyticsSettings()


@pytest.fixture
def store(engine: Engine) -> SqlAnalyticsStore:
    return SqlAnalyticsStore(engine, SETTINGS, SECRET)


def exposed(
    member: str,
    group: str = "treatment",
    at: datetime = NOW,
    *,
    campaign: str = "c-1",
    channel: str = "email",
    code: str = "",
    exposure_id: str | None = None,
) -> Exposure:
    return Exposure(
        exposure_id=exposure_id or f"x-{campaign}-{member}-{group}-{at.isoformat()}",
        campaign_id=campaign,
        member_id=member,
        channel=channel,
        group=group,  # type: ignore[arg-type]
        at=at,
        offer_id="welcome",
        coupon_code=code if group == "treatment" else "",
    )


def ev(type_: str, member: str, at: datetime, **fields: Any) -> Event:
    return Event.model_validate({"type": type_, "member_id": member, "timestamp": at, **fields})


def buy(member: str, order: str, value: float, at: datetime, **fields: Any) -> Event:
    line = {"item_id": "sku-1", "quantity": 1, "price": value}
    return ev("purchase", member, at, order_id=order, items=[line], **fields)


def refund(member: str, order: str, value: float, at: datetime) -> Event:
    return ev("refund", member, at, order_id=order, revenue=value)


def outcomes_of(
    store: SqlAnalyticsStore,
    campaign: str = "c-1",
    window_days: float = 30,
    confidence: float = 0.95,
    as_of: datetime = NOW + 60 * DAY,
) -> CampaignOutcomes:
    figures = store.campaign_figures(campaign, timedelta(days=window_days), as_of)
    return campaign_outcomes(campaign, figures, confidence, window_days, min_members=1)


def groups(done: CampaignOutcomes) -> dict[str, GroupOutcome]:
    return {group.name: group for group in done.groups}


def test_an_exposure_delivered_twice_counts_once(store: SqlAnalyticsStore) -> None:
    first = [exposed("m-1"), exposed("m-2", channel="sms"), exposed("c-1", "control")]

    assert store.apply_exposures([*first, first[0]]) == 3
    assert store.apply_exposures(first) == 0

    done = outcomes_of(store)
    assert {name: g.members for name, g in groups(done).items()} == {"treatment": 2, "control": 1}
    # Held-out members are no exposures of a channel.
    assert done.exposures == {"email": 1, "sms": 1}


def test_conversion_and_revenue_per_group_by_hand(store: SqlAnalyticsStore) -> None:
    store.apply_exposures(
        [exposed(f"t-{n}") for n in range(4)] + [exposed(f"c-{n}", "control") for n in range(4)]
    )
    store.apply_events(
        [
            buy("t-0", "o-1", 10.0, NOW + DAY),
            buy("t-1", "o-2", 30.0, NOW + 2 * DAY),
            buy("c-0", "o-3", 20.0, NOW + 3 * DAY),
        ]
    )

    done = outcomes_of(store)

    treatment, control = done.groups
    assert (treatment.name, treatment.members, treatment.converters) == ("treatment", 4, 2)
    assert (control.name, control.members, control.converters) == ("control", 4, 1)
    assert (treatment.revenue, control.revenue) == (40.0, 20.0)
    assert treatment.conversion_rate.value == 0.5 and control.conversion_rate.value == 0.25
    wilson = stats.binomtest(1, 4).proportion_ci(0.95, method="wilson")
    assert (control.conversion_rate.low, control.conversion_rate.high) == pytest.approx(
        (wilson.low, wilson.high)
    )
    assert treatment.revenue_per_member.value == 10.0 and control.revenue_per_member.value == 5.0
    conversion, revenue = (
        done.differences["conversion_rate"],
        done.differences["revenue_per_member"],
    )
    assert conversion.absolute == pytest.approx(0.25) and conversion.relative == pytest.approx(1.0)
    assert conversion.method == CONVERSION_METHOD and conversion.control == control.conversion_rate
    welch = stats.ttest_ind([1, 1, 0, 0], [1, 0, 0, 0], equal_var=False)
    assert conversion.p_value == pytest.approx(welch.pvalue)
    assert revenue.absolute == pytest.approx(5.0) and revenue.relative == pytest.approx(1.0)
    assert revenue.method == WELCH
    welch = stats.ttest_ind([10, 30, 0, 0], [20, 0, 0, 0], equal_var=False)
    assert revenue.p_value == pytest.approx(welch.pvalue)
    assert not conversion.significant and not revenue.significant
    assert done.warnings == ()


def test_only_purchases_within_the_window_after_the_first_exposure_count(
    store: SqlAnalyticsStore,
) -> None:
    # Each member's purchase has its own value, so the revenue says which ones counted.
    store.apply_exposures(
        [exposed(m) for m in ("early", "late", "inside", "again", "instant")]
        + [exposed("again", at=NOW + WINDOW)]
    )
    store.apply_events(
        [
            buy("early", "o-1", 1.0, NOW - timedelta(hours=1)),
            buy("late", "o-2", 2.0, NOW + 31 * DAY),
            buy("inside", "o-3", 4.0, NOW + 29 * DAY),
            # Five days after a later exposure, 35 after the first: the first one's window.
            buy("again", "o-4", 8.0, NOW + 35 * DAY),
            buy("instant", "o-5", 16.0, NOW),
        ]
    )

    treatment = groups(outcomes_of(store))["treatment"]
    assert (treatment.members, treatment.converters, treatment.revenue) == (5, 2, 20.0)
    week = groups(outcomes_of(store, window_days=7))["treatment"]
    assert (week.converters, week.revenue) == (1, 16.0)


def test_refunds_of_the_orders_counted_reduce_revenue(store: SqlAnalyticsStore) -> None:
    store.apply_exposures([exposed("r-1"), exposed("r-2"), exposed("r-3")])
    store.apply_events(
        [
            buy("r-1", "o-1", 50.0, NOW + DAY),
            # After the window, of an order bought within it: deducted.
            refund("r-1", "o-1", 20.0, NOW + 40 * DAY),
            buy("r-2", "o-2", 10.0, NOW + DAY),
            # More than the order was worth: it takes back the order, no more.
            refund("r-2", "o-2", 25.0, NOW + 2 * DAY),
            # Bought before the exposure: neither the order nor its refund counts.
            buy("r-3", "o-3", 70.0, NOW - DAY),
            refund("r-3", "o-3", 70.0, NOW + DAY),
        ]
    )

    treatment = groups(outcomes_of(store))["treatment"]

    # A refunded purchase still made its member a converter.
    assert (treatment.converters, treatment.revenue) == (2, 30.0)
    assert treatment.revenue_per_member.value == pytest.approx(10.0)


def segment_purchase(member: str, order: str, coupon: str, at: datetime) -> Event:
    """An Order Completed as ingestion maps it from Segment: the coupon stays in
    context.source.properties."""
    body = {
        "type": "track",
        "event": "Order Completed",
        "userId": member,
        "messageId": f"msg-{order}",
        "timestamp": at.isoformat(),
        "properties": {
            "order_id": order,
            "revenue": 25.0,
            "coupon": coupon,
            "products": [{"product_id": "sku-1", "price": 25.0, "quantity": 1}],
        },
    }
    (translated,) = translate("segment", json.dumps(body).encode())
    return parse_event(translated.events[0])


def ga4_purchase(member: str, order: str, coupon: str, at: datetime) -> Event:
    body = {
        "client_id": "c.1",
        "user_id": member,
        "timestamp_micros": int(at.timestamp() * 1_000_000),
        "events": [
            {
                "name": "purchase",
                "params": {
                    "transaction_id": order,
                    "value": 30.0,
                    "currency": "EUR",
                    "coupon": coupon,
                    "items": [{"item_id": "sku-1", "price": 30.0, "quantity": 1}],
                },
            }
        ],
    }
    (translated,) = translate("ga4", json.dumps(body).encode())
    return parse_event(translated.events[0])


def test_coupon_orders_are_treatment_purchases_with_a_code_the_member_was_given(
    store: SqlAnalyticsStore,
) -> None:
    store.apply_exposures(
        [
            exposed("m-1", code="WELCOME10"),
            exposed("m-2", channel="sms", code="VIP20"),
            exposed("c-1", "control"),
            exposed("m-3", campaign="c-2", code="WELCOME10"),
        ]
    )
    store.apply_events(
        [
            # Counted: the native context, in another case and with a space; Segment; GA4.
            buy("m-1", "o-1", 10.0, NOW + DAY, context={"coupon": " welcome10"}),
            segment_purchase("m-1", "o-2", "welcome10", NOW + 2 * DAY),
            ga4_purchase("m-1", "o-3", "WELCOME10", NOW + 3 * DAY),
            # A code given on one of the order's lines only (GA4's item-level coupon).
            buy(
                "m-1",
                "o-10",
                10.0,
                NOW + DAY,
                context={
                    "source": {"params": {"items": [{"item_id": "s", "coupon": "welcome10"}]}}
                },
            ),
            # Not counted: another code, none, after the window.
            buy("m-1", "o-4", 10.0, NOW + DAY, context={"coupon": "SUMMER"}),
            buy("m-1", "o-5", 10.0, NOW + DAY),
            buy("m-1", "o-6", 10.0, NOW + 31 * DAY, context={"coupon": "WELCOME10"}),
            # Someone else's code; a held-out member with the code; another campaign's.
            buy("m-2", "o-7", 10.0, NOW + DAY, context={"coupon": "WELCOME10"}),
            buy("c-1", "o-8", 10.0, NOW + DAY, context={"coupon": "WELCOME10"}),
            buy("m-3", "o-9", 10.0, NOW + DAY, context={"coupon": "WELCOME10"}),
        ]
    )

    done = outcomes_of(store)

    assert done.coupon_orders == 4
    assert done.exposures == {"email": 1, "sms": 1}
    assert groups(done)["treatment"].revenue == 10.0 + 25.0 + 30.0 + 10.0 + 10.0 + 10.0 + 10.0
    assert outcomes_of(store, "c-2").coupon_orders == 1


def every_value(engine: Engine) -> str:
    found = MetaData()
    found.reflect(engine)
    with engine.connect() as conn:
        return "\n".join(
            repr(row) for table in found.sorted_tables for row in conn.execute(select(table))
        )


def test_an_erased_member_leaves_the_figures(engine: Engine, store: SqlAnalyticsStore) -> None:
    erased = [exposed("m-gone", code="WELCOME10")]
    store.apply_exposures([*erased, exposed("m-kept"), exposed("c-1", "control")])
    store.apply_events(
        [
            buy("m-gone", "o-1", 10.0, NOW + DAY, context={"coupon": "WELCOME10"}),
            buy("m-kept", "o-2", 20.0, NOW + DAY),
        ]
    )

    store.apply_commands([Erase("m-gone", "erasure-1", NOW + 2 * DAY)])
    # Delivered again after the erasure: what it says is from before, and stays out.
    assert store.apply_exposures(erased) == 0

    done = outcomes_of(store)
    treatment = groups(done)["treatment"]
    assert (treatment.members, treatment.converters, treatment.revenue) == (1, 1, 20.0)
    assert (done.coupon_orders, done.exposures) == (0, {"email": 1})
    assert "m-gone" not in every_value(engine)


def test_a_linked_visitors_exposures_count_for_the_member(store: SqlAnalyticsStore) -> None:
    store.apply_exposures([exposed("anon-1", channel="onsite"), exposed("c-1", "control")])
    store.apply_events([buy("m-9", "o-1", 40.0, NOW + DAY)])

    store.apply_commands([Link("anon-1", "m-9", NOW + DAY)])
    # Arriving after the link, the visitor's next exposure is the member's at once.
    store.apply_exposures([exposed("anon-1", at=NOW + 2 * DAY, channel="email")])

    done = outcomes_of(store)
    treatment = groups(done)["treatment"]
    assert (treatment.members, treatment.converters, treatment.revenue) == (1, 1, 40.0)
    assert done.exposures == {"onsite": 1, "email": 1}


def test_a_member_in_both_groups_counts_in_the_first(store: SqlAnalyticsStore) -> None:
    store.apply_exposures(
        [
            exposed("m-1", "control", NOW + timedelta(hours=1)),
            exposed("m-1", "treatment", NOW),
            exposed("m-2", "control"),
        ]
    )

    done = outcomes_of(store)

    assert {name: g.members for name, g in groups(done).items()} == {"treatment": 1, "control": 1}
    assert any("1 member was in both groups" in w for w in done.warnings)


def test_warnings_say_what_cannot_be_measured(store: SqlAnalyticsStore) -> None:
    store.apply_exposures([exposed("m-1"), exposed("m-2", at=NOW + 20 * DAY)])
    figures = store.campaign_figures("c-1", WINDOW, NOW + 25 * DAY)

    done = campaign_outcomes("c-1", figures, 0.95, 30, min_members=100)

    assert done.warnings == (
        "no control group: uplift cannot be measured",
        "fewer than 100 members per group ('treatment'): too few for any difference to be "
        "told from chance",
        "2 members were first exposed less than 30 days ago: their window is still open and "
        "the figures will grow",
    )
    # Compared with nobody: each difference says why it has no test.
    assert all(d.note and d.p_value == 1.0 for d in done.differences.values())
    nobody = campaign_outcomes("c-9", CampaignFigures({}), 0.95, 30, min_members=100)
    assert (nobody.groups, nobody.differences) == ((), {})
    assert nobody.warnings == (
        "no exposures yet: nobody was exposed to or held out from campaign 'c-9'",
    )


def test_a_known_uplift_is_inside_the_interval_and_significant(store: SqlAnalyticsStore) -> None:
    rng = np.random.default_rng(20261120)
    chances = {"control": 0.10, "treatment": 0.15}
    exposures, purchases = [], []
    for group, chance in chances.items():
        for n in range(2000):
            member, at = f"{group}-{n}", NOW + timedelta(minutes=n)
            exposures.append(exposed(member, group, at))
            if rng.random() < chance:
                value = float(round(rng.gamma(2.0, 25.0), 2))
                purchases.append(buy(member, f"o-{member}", value, at + rng.random() * 20 * DAY))
    store.apply_exposures(exposures)
    store.apply_events(purchases)

    done = outcomes_of(store)

    conversion = done.differences["conversion_rate"]
    assert conversion.low < 0.05 < conversion.high
    assert conversion.significant and conversion.p_value < 0.001
    assert conversion.absolute == pytest.approx(0.05, abs=0.02)
    # 0.15 * 50 - 0.10 * 50 = 2.5 more revenue per member, in truth.
    revenue = done.differences["revenue_per_member"]
    assert revenue.low < 2.5 < revenue.high


def aa_campaign(seed: int, members: int = 2000, chance: float = 0.10) -> CampaignOutcomes:
    rng = np.random.default_rng(seed)
    groups_ = {}
    for group in ("treatment", "control"):
        converted = (rng.random(members) < chance).astype(np.float64)
        revenue = converted * rng.gamma(2.0, 25.0, members)
        groups_[group] = GroupMembers(converted, revenue)
    return campaign_outcomes("aa", CampaignFigures(groups_), 0.95, 30, min_members=100)


def test_aa_campaigns_are_significant_at_about_the_stated_rate() -> None:
    runs = [aa_campaign(seed) for seed in range(400)]

    for metric in ("conversion_rate", "revenue_per_member"):
        found = [run.differences[metric] for run in runs]
        false_alarms = sum(d.significant for d in found) / len(found)
        covered = sum(d.low < 0 < d.high for d in found) / len(found)
        assert 0.025 <= false_alarms <= 0.08, metric
        assert covered == pytest.approx(1 - false_alarms)


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (10, 10), (1, 4), (37, 400), (1, 1)])
def test_a_proportion_has_the_wilson_interval(successes: int, n: int) -> None:
    for confidence in (0.9, 0.95, 0.99):
        found = proportion_estimate(successes, n, confidence)
        expected = stats.binomtest(successes, n).proportion_ci(confidence, method="wilson")
        assert (found.value, found.n) == (successes / n, n)
        assert (found.low, found.high) == pytest.approx((expected.low, expected.high))
        assert 0 <= found.low <= found.value <= found.high <= 1


def test_no_members_have_a_collapsed_proportion_and_bad_counts_are_errors() -> None:
    assert proportion_estimate(0, 0) == proportion_estimate(0, 0, 0.9)
    assert (proportion_estimate(0, 0).low, proportion_estimate(0, 0).high) == (0.0, 0.0)
    with pytest.raises(ValueError, match="successes"):
        proportion_estimate(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        proportion_estimate(1, 4, 1.0)


def test_purchases_kept_before_the_upgrade_count_without_a_coupon(engine: Engine) -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config("analytics", conn), "0002_impressions_outcomes")
        conn.execute(
            outcomes.insert(),
            {
                "event_id": "e-old",
                "member_id": "m-1",
                "kind": "purchase",
                "at": NOW + DAY,
                "order_id": "o-1",
                "lines": "[]",
                "amount": 12.5,
                "item_ids": "[]",
                "revenue": 0.0,
                "refunded": 0.0,
            },
        )

    store = SqlAnalyticsStore(engine, SETTINGS, SECRET)
    store.apply_exposures([exposed("m-1", code="WELCOME10")])

    done = outcomes_of(store)
    assert (groups(done)["treatment"].revenue, done.coupon_orders) == (12.5, 0)
    store.close()


# GetCampaignOutcomes over the bus and gRPC.

AS_OF = NOW + 45 * DAY
# The stub, and the reasons of the records dead-lettered.
Analytics = tuple[analytics_pb2_grpc.AnalyticsServiceStub, list[str]]


@pytest.fixture
async def analytics(
    tmp_path: Path,
) -> AsyncIterator[Analytics]:
    store = SqlAnalyticsStore.from_url(f"sqlite:///{tmp_path / 'analytics.db'}", SETTINGS, SECRET)
    bus = LocalLogBus(tmp_path / "bus", partitions=2, fsync=False)
    bus.ensure_topics(ALL_TOPICS)
    shown = [exposed(f"t-{n}", code="WELCOME10") for n in range(10)]
    shown += [exposed(f"c-{n}", "control") for n in range(10)]
    bought = [
        buy(f"t-{n}", f"o-t{n}", 20.0, NOW + DAY, context={"coupon": "WELCOME10"}) for n in range(4)
    ]
    bought += [buy(f"c-{n}", f"o-c{n}", 20.0, NOW + DAY) for n in range(2)]
    # Exposures first: events come on their own topic, later or not.
    bus.publish(EXPOSURES_TOPIC, [x.to_message() for x in shown])
    bus.publish(
        EXPOSURES_TOPIC,
        [
            Message("m-x", b"{not an exposure"),
            Message("m-x", json.dumps({"exposure_id": "x", "group": "maybe"}).encode()),
            exposed("bad\x00id", exposure_id="x-bad").to_message(),
            # Delivered twice: counted once.
            shown[0].to_message(),
        ],
    )
    bus.publish(EVENTS_TOPIC, event_records(bought))
    bus.publish(MEMBERS_TOPIC, [command_message(Erase("t-9", "e-1", NOW + 2 * DAY))])
    analytics_worker(bus, store, SETTINGS).drain()
    dead = list(dead_letters.read(bus))
    bus.close()
    server = grpc.aio.server()
    servicer = AnalyticsServicer(store, SETTINGS, Clock.fixed(AS_OF))
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield analytics_pb2_grpc.AnalyticsServiceStub(channel), [d.reason for d in dead]
    finally:
        await channel.close()
        await server.stop(None)
        store.close()


async def test_the_outcomes_of_a_campaign_from_the_bus(
    analytics: Analytics,
) -> None:
    stub, dead = analytics

    reply = await stub.GetCampaignOutcomes(analytics_pb2.CampaignOutcomesRequest(campaign_id="c-1"))

    assert [reason.split(":")[0] for reason in dead] == [
        "unreadable exposure",
        "unreadable exposure",
        "unusable exposure",
    ]
    assert "member_id must not contain control characters" in dead[2]
    assert (reply.campaign_id, reply.confidence, reply.as_of) == ("c-1", 0.95, AS_OF.isoformat())
    assert "30 days" in reply.attribution and "refunds" in reply.attribution
    treatment, control = reply.groups
    # t-9 was erased.
    assert (treatment.group, treatment.members, treatment.converters, treatment.revenue) == (
        "treatment",
        9,
        4,
        80.0,
    )
    assert (control.group, control.members, control.converters, control.revenue) == (
        "control",
        10,
        2,
        40.0,
    )
    assert treatment.conversion_rate.value == pytest.approx(4 / 9)
    assert treatment.conversion_rate.low < 4 / 9 < treatment.conversion_rate.high
    assert control.revenue_per_member.value == pytest.approx(4.0)
    conversion, revenue = reply.differences
    assert (conversion.metric, revenue.metric) == ("conversion_rate", "revenue_per_member")
    assert conversion.absolute == pytest.approx(4 / 9 - 0.2)
    assert conversion.relative == pytest.approx((4 / 9) / 0.2 - 1)
    assert conversion.method == CONVERSION_METHOD and 0 < conversion.p_value < 1
    assert revenue.method == WELCH and revenue.absolute == pytest.approx(80 / 9 - 4)
    assert dict(reply.exposures) == {"email": 9}
    assert reply.coupon_orders == 4
    assert list(reply.warnings) == [
        "fewer than 100 members per group ('treatment', 'control'): too few for any "
        "difference to be told from chance"
    ]


async def test_a_window_and_a_confidence_are_honoured(
    analytics: Analytics,
) -> None:
    stub, _ = analytics

    reply = await stub.GetCampaignOutcomes(
        analytics_pb2.CampaignOutcomesRequest(campaign_id="c-1", confidence=0.8, window_days=0.5)
    )

    assert reply.confidence == 0.8 and "0.5 days" in reply.attribution
    # Every purchase came a day after the exposures.
    assert [g.converters for g in reply.groups] == [0, 0]
    assert reply.coupon_orders == 0


async def test_a_campaign_nobody_was_exposed_to_says_so(
    analytics: Analytics,
) -> None:
    stub, _ = analytics

    reply = await stub.GetCampaignOutcomes(analytics_pb2.CampaignOutcomesRequest(campaign_id="c-9"))

    assert list(reply.groups) == [] and list(reply.differences) == []
    assert list(reply.warnings) == [
        "no exposures yet: nobody was exposed to or held out from campaign 'c-9'"
    ]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({}, "campaign_id"),
        ({"campaign_id": "c-1", "confidence": 1.5}, "confidence"),
        ({"campaign_id": "c-1", "window_days": -1}, "window_days"),
        ({"campaign_id": "c-1", "window_days": float("nan")}, "window_days"),
        ({"campaign_id": "c-1", "window_days": 10_000}, "window_days"),
    ],
)
async def test_a_bad_request_is_invalid_argument_naming_the_field(
    analytics: Analytics,
    request_fields: dict[str, Any],
    field: str,
) -> None:
    stub, _ = analytics

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetCampaignOutcomes(analytics_pb2.CampaignOutcomesRequest(**request_fields))

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")
