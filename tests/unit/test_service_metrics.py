"""Every service's own Prometheus metrics: calls per method and status, their latency, the
records each consumer group applied, its lag on the bus, and the model version served."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from services.common.bus import EVENTS_TOPIC, Message, Record
from services.common.bus.local_log import LocalLogBus
from services.common.consuming import BusWorker, DeadLetter
from services.common.metrics import CACHES, LAG, MeteredCalls, model_served, serve_metrics
from services.retrieval.activity import ActivityCache
from tests.integration.conftest import free_port


def _value(name: str, **labels: str) -> float:
    found = REGISTRY.get_sample_value(name, labels)
    return found or 0.0


async def test_calls_are_counted_and_timed_per_method_and_status() -> None:
    server = grpc.aio.server(interceptors=[MeteredCalls()])
    servicer = health.aio.HealthServicer()
    await servicer.set("known", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    ok_before = _value("recofleet_rpc_requests_total", method="Check", code="OK")
    missing_before = _value("recofleet_rpc_requests_total", method="Check", code="NOT_FOUND")
    timed_before = _value("recofleet_rpc_duration_seconds_count", method="Check")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(service="known"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Check(health_pb2.HealthCheckRequest(service="unknown"))
    await server.stop(None)

    assert _value("recofleet_rpc_requests_total", method="Check", code="OK") == ok_before + 1
    missing = _value("recofleet_rpc_requests_total", method="Check", code="NOT_FOUND")
    assert missing == missing_before + 1
    assert _value("recofleet_rpc_duration_seconds_count", method="Check") == timed_before + 2


def test_a_consumer_groups_lag_and_records_are_measured(tmp_path: Path) -> None:
    bus = LocalLogBus(tmp_path / "bus", partitions=2)
    bus.ensure_topics([EVENTS_TOPIC])
    bus.publish(EVENTS_TOPIC, [Message(f"m-{n}", b"[]") for n in range(5)])

    def refuse_the_first(records: Sequence[Record]) -> list[DeadLetter]:
        return [DeadLetter(records[0], "refused by the test")]

    worker = BusWorker(bus, "metered", [EVENTS_TOPIC], refuse_the_first)
    LAG.track(worker)  # as start() does, without the thread
    try:
        before = _lag()
        worker.drain()
        after = _lag()
        bus.publish(EVENTS_TOPIC, [Message("m-9", b"[]")])
        pending = _lag()
    finally:
        LAG.untrack(worker)
        bus.close()

    assert (before, after, pending) == (5, 0, 1)
    applied = _value("recofleet_consumer_records_total", group="metered", outcome="applied")
    dead = _value("recofleet_consumer_records_total", group="metered", outcome="dead_lettered")
    assert applied + dead == 5 and dead >= 1


def _lag() -> float:
    return sum(
        _value("recofleet_consumer_lag", group="metered", topic=EVENTS_TOPIC, partition=p)
        for p in ("0", "1")
    )


def test_the_model_served_is_one_version_at_a_time() -> None:
    model_served("retrieval", "v1")
    model_served("retrieval", "v2")

    assert _value("recofleet_model_info", model="retrieval", version="v2") == 1
    old = {"model": "retrieval", "version": "v1"}
    assert REGISTRY.get_sample_value("recofleet_model_info", old) is None


def test_a_watched_caches_entries_and_hit_ratio_are_read_at_scrape() -> None:
    cache = ActivityCache(lambda member_id: [], capacity=2)
    CACHES.watch("test_activity", cache)
    for member_id in ("a", "a", "b", "c", "a"):
        cache.get(member_id)

    assert _value("recofleet_cache_entries", cache="test_activity") == 2  # "a" was evicted
    assert _value("recofleet_cache_lookups_total", cache="test_activity", outcome="hit") == 1
    assert _value("recofleet_cache_lookups_total", cache="test_activity", outcome="miss") == 4


def test_metrics_are_served_beside_the_grpc_port() -> None:
    wanted, offset = free_port(), 7
    served = serve_metrics(f"127.0.0.1:{wanted - offset}", offset)

    assert served == wanted
    body = httpx.get(f"http://127.0.0.1:{served}/metrics").text
    assert "recofleet_rpc_requests_total" in body
    assert serve_metrics("127.0.0.1:50051", 0) is None
