"""Ranking 200 candidates over gRPC, per ranker, and the cost of logging impressions.

    python -m bench.ranking [--requests 3000] [--json PATH] [--keep]

1. Loads the bundled sample into a scratch data dir (`recofleet load-sample`) and trains
   the learned ranker on it (`recofleet train-ranker`), as a user would.
2. Starts the ranking service as its own process (`python -m services.ranking`) and asks
   it, from this process, to rank the probe's request (200 candidates from every source, a
   member with scores, affinities and 20 recent items; services/ranking/probe.py) with each
   ranker by name, one call at a time: p50, p99 and p99.9 of the call, and the service's
   CPU per call (read from /proc) beside the gRPC floor (a health check).
3. Measures, in this process, what an impression costs the gateway (queueing the answer,
   encoding it in its batch) and ingestion (validating and publishing it on the local log).

Prints the figures and the machine; never judges them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import msgspec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.fleet import (
    cli,
    code_version,
    fleet_settings,
    machine,
    percentile,
    publish,
    say,
    table,
    work_dir,
)
from bench.grpc_floor import cpu_seconds
from services.common.bus.local_log import LocalLogBus
from services.common.clock import Clock
from services.common.pii import PiiScrubber
from services.gateway.compose import RankedEntry, Recommendation
from services.gateway.impressions import ImpressionLog
from services.gateway.settings import ImpressionSettings
from services.gen.recofleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.ingestion.domain import Ingestor
from services.ingestion.settings import IngestionSettings
from services.ranking.probe import probe_request

RANKERS = ("blend", "ltr")
IMPRESSIONS = 20_000


def rank_request(ranker: str) -> ranking_pb2.RankRequest:
    member, candidates = probe_request()
    context = ranking_pb2.MemberContext(
        member_id=member.member_id,
        category_weights=dict(member.category_weights),
        orders=member.orders,
        r_score=member.r_score,
        f_score=member.f_score,
        m_score=member.m_score,
        price_band=member.price_band,
        price_percentile=member.price_percentile,
        affinities=dict(member.affinities),
        lifecycle=member.lifecycle,
        recent_item_ids=[c.item_id for c in candidates[:20]],
    )
    return ranking_pb2.RankRequest(
        member=context, candidates=candidates, placement="home", limit=10, ranker=ranker
    )


async def timed_calls(
    call: Any, request: Any, count: int, pid: int, warmup: int = 200
) -> dict[str, float]:
    for _ in range(warmup):
        await call(request, timeout=5)
    cpu_before = cpu_seconds(pid)
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        await call(request, timeout=5)
        timings.append((time.perf_counter() - started) * 1000)
    cpu = (cpu_seconds(pid) - cpu_before) * 1000 / count
    timings.sort()
    return {
        "p50_ms": round(percentile(timings, 50), 3),
        "p99_ms": round(percentile(timings, 99), 3),
        "p99.9_ms": round(percentile(timings, 99.9), 3),
        "service_cpu_ms": round(cpu, 3),
    }


async def measure_service(address: str, pid: int, requests: int) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        figures: dict[str, Any] = {
            "health check (the floor)": await timed_calls(
                health.Check, health_pb2.HealthCheckRequest(), requests, pid
            )
        }
        for ranker in RANKERS:
            figures[ranker] = await timed_calls(stub.Rank, rank_request(ranker), requests, pid)
        return figures


def impression_costs(folder: Path) -> dict[str, float]:
    """µs per impression: queued and encoded in the gateway; validated and published by
    ingestion on the local log (fsync on, as the fleet runs)."""
    answer = Recommendation(
        recommendation_id="r-bench",
        member_id="m-bench",
        placement="home",
        items=[RankedEntry(f"sku-{i}", 1 - i / 10, ["popular"], "garden") for i in range(10)],
        model="ltr@v+als@v",
        variant="treatment",
        experiment_id="exp-bench",
    )
    sources = {f"sku-{i}": {"als": 0.1, "trending": 0.05} for i in range(10)}
    payloads: list[bytes] = []

    async def keep(payload: bytes) -> None:
        payloads.append(payload)

    log = ImpressionLog(keep, ImpressionSettings(max_queued=IMPRESSIONS * 2), Clock())
    started = time.perf_counter()
    for _ in range(IMPRESSIONS):
        log.record(answer, sources)
    queued = time.perf_counter() - started
    started = time.perf_counter()
    asyncio.run(log.flush())
    encoded = time.perf_counter() - started
    bus = LocalLogBus(folder / "bus", partitions=4, fsync=True)
    ingestor = Ingestor(bus, PiiScrubber(os.urandom(32)), IngestionSettings())
    started = time.perf_counter()
    for payload in payloads:
        ingestor.publish_events(payload)
    ingested = time.perf_counter() - started
    bus.close()
    events = sum(len(msgspec.json.decode(p)["events"]) for p in payloads)
    return {
        "gateway: queue the answer (µs)": round(queued / IMPRESSIONS * 1e6, 1),
        "gateway: encode in its batch (µs)": round(encoded / IMPRESSIONS * 1e6, 1),
        "ingestion: validate and publish (µs)": round(ingested / events * 1e6, 1),
        "impressions": events,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ranking", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="calls per ranker")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the scratch data dir")
    args = parser.parse_args(argv)
    with work_dir("ranking", args.keep) as folder:
        fleet, env = fleet_settings(folder / "var")
        say("loading the sample and training the learned ranker")
        cli(env, "load-sample")
        trained, seconds = cli(env, "train-ranker")
        say(f"trained in {seconds:.1f}s")
        service = subprocess.Popen(
            [sys.executable, "-m", "services.ranking"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_serving(fleet.ranking_addr)
            figures = asyncio.run(measure_service(fleet.ranking_addr, service.pid, args.requests))
        finally:
            service.terminate()
            service.wait(timeout=30)
        costs = impression_costs(folder)
    results = {
        "code": code_version(),
        "machine": machine(),
        "requests": args.requests,
        "rank": figures,
        "impressions": costs,
        "trained": trained.strip().splitlines()[-3:],
    }
    rows = [[name, *values.values()] for name, values in figures.items()]
    report = "\n".join(
        [
            f"code {results['code']}; {results['machine']['cpu_model']}, "
            f"{results['machine']['cpus_usable']} cores",
            f"Rank(200 candidates, limit 10) over gRPC, {args.requests} calls one at a time:",
            table(["", "p50 ms", "p99 ms", "p99.9 ms", "service CPU ms/call"], rows),
            "Impression logging:",
            table(["", "value"], [[k, v] for k, v in costs.items()]),
        ]
    )
    publish(results, report, args.json)
    return 0


def _wait_serving(address: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"ranking at {address} not serving within {timeout_s}s")


if __name__ == "__main__":
    sys.exit(main())
