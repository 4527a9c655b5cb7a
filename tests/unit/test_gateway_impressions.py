"""The impression log: every answer queued in memory and sent to ingestion in batches."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from services.common.clock import Clock
from services.common.events import EventType, parse_event
from services.gateway.compose import RankedEntry, Recommendation
from services.gateway.impressions import LOGGED, ImpressionLog
from services.gateway.settings import GatewaySettings, ImpressionSettings
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ingestion.v1 import ingestion_pb2
from tests.unit.test_gateway_compose import Fleet

AT = datetime(2026, 12, 1, 12, tzinfo=UTC)


def _answer(member_id: str = "m-1", n: int = 3) -> Recommendation:
    return Recommendation(
        recommendation_id=f"r-{member_id}",
        member_id=member_id,
        placement="home",
        items=[RankedEntry(f"sku-{i}", 1.0 - i / 10, ["popular"], "garden") for i in range(n)],
        model="ltr@v1+als@v2",
        variant="treatment",
        experiment_id="exp-1",
    )


class Ingestion:
    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.failing = False

    async def publish(self, payload: bytes) -> Any:
        if self.failing:
            raise ConnectionError("ingestion down")
        self.payloads.append(payload)
        return ingestion_pb2.PublishEventsResponse()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for p in self.payloads for e in json.loads(p)["events"]]


def _log(ingestion: Ingestion, **settings: Any) -> ImpressionLog:
    return ImpressionLog(ingestion.publish, ImpressionSettings(**settings), Clock.fixed(AT))


async def test_an_impression_is_a_valid_native_event_with_positions_and_the_variant() -> None:
    ingestion = Ingestion()
    log = _log(ingestion)
    log.record(_answer(), {"sku-0": {"als": 0.2, "trending": 0.1}})

    assert await log.flush()

    (sent,) = ingestion.events
    event = parse_event(sent)
    assert event.type is EventType.IMPRESSION
    assert (event.member_id, event.recommendation_id) == ("m-1", "r-m-1")
    assert [line.item_id for line in event.lines()] == ["sku-0", "sku-1", "sku-2"]
    assert event.context["variant"] == "treatment" and event.context["experiment_id"] == "exp-1"
    assert event.context["placement"] == "home"
    assert event.context["sources"] == {"sku-0": {"als": 0.2, "trending": 0.1}}
    assert event.context["scores"]["sku-1"] == pytest.approx(0.9)


async def test_a_composed_answer_logs_how_long_it_took_to_compose() -> None:
    fleet = Fleet()
    ingestion = Ingestion()
    log = _log(ingestion)
    fleet.composer.shown = log.record
    # Ranking takes 40 ms: the answer cannot have taken less.
    fleet.ranking.delay["Rank"] = 0.04

    answer = await fleet.recommend()
    assert await log.flush()

    (sent,) = ingestion.events
    latency = parse_event(sent).context["latency_ms"]
    assert answer.latency_ms is not None and latency == round(answer.latency_ms, 2)
    assert 40 <= latency < GatewaySettings().recommend_budget_s * 1000 + 100


async def test_an_answer_without_a_latency_logs_none() -> None:
    ingestion = Ingestion()
    log = _log(ingestion)
    log.record(_answer())

    assert await log.flush()

    (sent,) = ingestion.events
    assert "latency_ms" not in sent["context"]


async def test_answers_are_sent_in_batches_within_the_flush_interval() -> None:
    ingestion = Ingestion()
    log = _log(ingestion, batch_size=10, flush_interval_s=0.05)
    running = asyncio.create_task(log.run())
    for i in range(25):
        log.record(_answer(f"m-{i}"))

    await asyncio.sleep(0.3)
    await log.close()
    running.cancel()

    assert len(ingestion.events) == 25
    assert all(len(json.loads(p)["events"]) <= 10 for p in ingestion.payloads)
    assert len({e["event_id"] for e in ingestion.events}) == 25


async def test_nothing_is_lost_while_ingestion_is_down() -> None:
    ingestion = Ingestion()
    log = _log(ingestion, batch_size=4)
    ingestion.failing = True
    for i in range(10):
        log.record(_answer(f"m-{i}"))

    assert not await log.flush()
    assert log.queued == 10
    ingestion.failing = False
    assert await log.flush()

    assert [e["member_id"] for e in ingestion.events] == [f"m-{i}" for i in range(10)]


async def test_a_full_queue_drops_new_impressions_and_counts_them() -> None:
    ingestion = Ingestion()
    log = _log(ingestion, max_queued=3)
    dropped = LOGGED.labels("dropped")._value.get()

    for i in range(5):
        log.record(_answer(f"m-{i}"))

    assert log.queued == 3
    assert LOGGED.labels("dropped")._value.get() == dropped + 2


async def test_empty_answers_and_similar_items_are_not_impressions() -> None:
    ingestion = Ingestion()
    log = _log(ingestion)
    log.record(_answer(n=0))
    log.record(_answer(member_id=""))
    log.record(_answer(), None)

    await log.flush()

    assert len(ingestion.events) == 1


async def test_refusals_by_ingestion_are_counted_not_retried() -> None:
    class Refusing(Ingestion):
        async def publish(self, payload: bytes) -> Any:
            self.payloads.append(payload)
            return ingestion_pb2.PublishEventsResponse(
                rejected=[common_pb2.Rejection(index=0, reason="bad")]
            )

    ingestion = Refusing()
    log = _log(ingestion)
    refused = LOGGED.labels("refused")._value.get()
    log.record(_answer())

    assert await log.flush()
    assert log.queued == 0
    assert LOGGED.labels("refused")._value.get() == refused + 1
