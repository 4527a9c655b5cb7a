"""GetExperimentReport end to end: impressions and members' events published on a local bus,
applied by the analytics consumer to a SQLite store, the report asked over an in-process
gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.analytics.consumer import analytics_worker
from services.analytics.servicer import AnalyticsServicer
from services.analytics.settings import AnalyticsSettings
from services.analytics.store import SqlAnalyticsStore
from services.common import dead_letters
from services.common.bus import (
    ALL_TOPICS,
    EVENTS_TOPIC,
    IMPRESSIONS_TOPIC,
    MEMBERS_TOPIC,
    Message,
)
from services.common.bus.local_log import LocalLogBus
from services.common.clock import Clock
from services.common.events import Event, event_records
from services.common.members import Erase, command_message
from services.gen.recofleet.analytics.v1 import analytics_pb2, analytics_pb2_grpc

AT = datetime(2026, 12, 1, 12, tzinfo=UTC)
STARTED = AT - timedelta(days=2)
HOUR = timedelta(hours=1)
SECRET = b"a test secret of enough length!!"
SETTINGS = AnalyticsSettings()
VARIANTS = [
    analytics_pb2.ReportVariant(name="control", share=0.5),
    analytics_pb2.ReportVariant(name="treatment", share=0.5),
]


def ev(type_: str, member: str, at: datetime, **fields: Any) -> Event:
    return Event.model_validate({"type": type_, "member_id": member, "timestamp": at, **fields})


def shop(variant: str, members: int, click_every: int, buy_every: int) -> tuple[list[Event], ...]:
    """Two impressions per member; every click_every-th member clicks (naming the answer),
    every buy_every-th buys a shown item for 20.0 (attributed by last touch); each member
    spent before the experiment."""
    shown, done = [], []
    for i in range(members):
        member, at = f"{variant[0]}-{i}", STARTED + timedelta(hours=1 + i % 20)
        for n in range(2):
            shown.append(
                ev(
                    "impression",
                    member,
                    at + timedelta(minutes=n),
                    recommendation_id=f"r-{member}-{n}",
                    items=[{"item_id": "sku-a"}, {"item_id": "sku-b"}],
                    context={"placement": "home", "variant": variant, "experiment_id": "exp-1"},
                )
            )
        done.append(
            ev("purchase", member, STARTED - timedelta(days=30), item_id="sku-z", revenue=i % 7)
        )
        if i % click_every == 0:
            done.append(
                ev("click", member, at + HOUR, item_id="sku-a", recommendation_id=f"r-{member}-0")
            )
        if i % buy_every == 0:
            line = {"item_id": "sku-b", "quantity": 1, "price": 20.0}
            done.append(ev("purchase", member, at + HOUR, order_id=f"o-{member}", items=[line]))
    return shown, done


@dataclass
class Analytics:
    stub: analytics_pb2_grpc.AnalyticsServiceStub
    dead_lettered: int = 0


@asynccontextmanager
async def serving(
    store: SqlAnalyticsStore,
) -> AsyncIterator[analytics_pb2_grpc.AnalyticsServiceStub]:
    server = grpc.aio.server()
    servicer = AnalyticsServicer(store, SETTINGS, Clock.fixed(AT))
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield analytics_pb2_grpc.AnalyticsServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)
        store.close()


@pytest.fixture
async def analytics(tmp_path: Path) -> AsyncIterator[Analytics]:
    store = SqlAnalyticsStore.from_url(f"sqlite:///{tmp_path / 'analytics.db'}", SETTINGS, SECRET)
    bus = LocalLogBus(tmp_path / "bus", partitions=2, fsync=False)
    bus.ensure_topics(ALL_TOPICS)
    control_shown, control_done = shop("control", 150, click_every=5, buy_every=10)
    treatment_shown, treatment_done = shop("treatment", 150, click_every=3, buy_every=5)
    # The members' events first: impressions come on their own topic, later or not.
    bus.publish(EVENTS_TOPIC, event_records([*control_done, *treatment_done]))
    bus.publish(IMPRESSIONS_TOPIC, [Message("m-x", b"{not an impression")])
    bus.publish(IMPRESSIONS_TOPIC, event_records([*control_shown, *treatment_shown]))
    bus.publish(MEMBERS_TOPIC, [command_message(Erase("t-0", "e-1", AT - HOUR))])
    analytics_worker(bus, store, SETTINGS).drain()
    dead = len(list(dead_letters.read(bus)))
    bus.close()
    async with serving(store) as stub:
        yield Analytics(stub, dead)


@pytest.fixture
async def empty(tmp_path: Path) -> AsyncIterator[analytics_pb2_grpc.AnalyticsServiceStub]:
    store = SqlAnalyticsStore.from_url(f"sqlite:///{tmp_path / 'analytics.db'}", SETTINGS, SECRET)
    async with serving(store) as stub:
        yield stub


async def test_the_report_of_an_experiment_from_its_events(analytics: Analytics) -> None:
    reply = await analytics.stub.GetExperimentReport(
        analytics_pb2.ExperimentReportRequest(
            experiment_id="exp-1", variants=VARIANTS, control="control"
        )
    )

    assert analytics.dead_lettered == 1
    assert reply.experiment_id == "exp-1" and reply.confidence == 0.95
    assert reply.as_of == AT.isoformat() and "24 h" in reply.attribution
    assert list(reply.warnings) == []
    control, treatment = reply.variants
    # t-0 was erased: 149 treatment members.
    assert (control.name, control.members, treatment.name, treatment.members) == (
        "control",
        150,
        "treatment",
        149,
    )
    assert (control.impressions, control.clicks, control.purchases, control.revenue) == (
        300,
        30,
        15,
        300.0,
    )
    assert (treatment.impressions, treatment.clicks, treatment.purchases, treatment.revenue) == (
        298,
        49,
        29,
        580.0,
    )
    assert control.ctr.value == pytest.approx(0.1) and control.ctr.n == 150
    assert control.ctr.low < 0.1 < control.ctr.high
    assert control.conversion_rate.value == pytest.approx(0.1)
    assert control.revenue_per_member.value == pytest.approx(2.0)
    assert list(control.differences) == []
    by_metric = {d.metric: d for d in treatment.differences}
    assert list(by_metric) == [
        "ctr",
        "add_to_cart_rate",
        "conversion_rate",
        "revenue_per_member",
        "revenue_per_member_cuped",
    ]
    ctr = by_metric["ctr"]
    assert ctr.absolute == pytest.approx(49 / 298 - 0.1)
    assert ctr.relative == pytest.approx((49 / 298) / 0.1 - 1)
    assert "delta method" in ctr.method and 0 < ctr.p_value < 1
    assert by_metric["revenue_per_member_cuped"].HasField("variance_reduction")
    assert not by_metric["revenue_per_member"].HasField("variance_reduction")
    # Nobody carted: no relative lift against a control of 0, and a note why no test.
    carts = by_metric["add_to_cart_rate"]
    assert not carts.HasField("relative") and carts.note and carts.p_value == 1.0
    assert dict(reply.sample_ratio.expected) == {"control": 149.5, "treatment": 149.5}
    assert not reply.sample_ratio.flagged


async def test_a_window_and_a_confidence_are_honoured(analytics: Analytics) -> None:
    reply = await analytics.stub.GetExperimentReport(
        analytics_pb2.ExperimentReportRequest(
            experiment_id="exp-1",
            variants=VARIANTS,
            started_at=(STARTED + timedelta(hours=10)).isoformat(),
            stopped_at=(STARTED + timedelta(hours=15)).isoformat(),
            confidence=0.99,
        )
    )

    # Members first shown in hours 10 to 14 of the 20: 8 + 4 x 7 of each 150.
    assert reply.confidence == 0.99
    assert [v.members for v in reply.variants] == [36, 36]
    assert any(w.startswith("fewer than 100 members") for w in reply.warnings)


async def test_an_experiment_nobody_saw_has_a_report_that_says_so(
    empty: analytics_pb2_grpc.AnalyticsServiceStub,
) -> None:
    reply = await empty.GetExperimentReport(
        analytics_pb2.ExperimentReportRequest(experiment_id="exp-unknown", variants=VARIANTS)
    )

    assert [v.members for v in reply.variants] == [0, 0]
    assert reply.warnings[0].startswith("no impressions yet")


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"variants": VARIANTS}, "experiment_id"),
        ({"experiment_id": "exp-1"}, "variants"),
        (
            {
                "experiment_id": "exp-1",
                "variants": [analytics_pb2.ReportVariant(name="a", share=0)],
            },
            "variants[0].share",
        ),
        ({"experiment_id": "exp-1", "variants": VARIANTS * 2}, "variants[2].name"),
        ({"experiment_id": "exp-1", "variants": VARIANTS, "control": "nope"}, "control"),
        ({"experiment_id": "exp-1", "variants": VARIANTS, "confidence": 1.5}, "confidence"),
        ({"experiment_id": "exp-1", "variants": VARIANTS, "started_at": "yesterday"}, "started_at"),
        (
            {
                "experiment_id": "exp-1",
                "variants": VARIANTS,
                "started_at": AT.isoformat(),
                "stopped_at": STARTED.isoformat(),
            },
            "stopped_at",
        ),
    ],
)
async def test_a_bad_request_is_invalid_argument_naming_the_field(
    empty: analytics_pb2_grpc.AnalyticsServiceStub, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await empty.GetExperimentReport(analytics_pb2.ExperimentReportRequest(**fields))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(named)
