"""GetCandidates over gRPC against a running retrieval server: one caller, then several."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import grpc

from bench.fleet import percentile
from services.common.grpc_server import MESSAGE_OPTIONS
from services.gen.recofleet.retrieval.v1 import retrieval_pb2, retrieval_pb2_grpc

DEADLINE_S = 10.0


def figures(times_ms: list[float], wall_s: float, errors: int, short: int) -> dict[str, Any]:
    ordered = sorted(times_ms)
    return {
        "requests": len(times_ms),
        "errors": errors,
        "short_answers": short,
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else None,
        "requests_per_s": len(times_ms) / wall_s if wall_s else None,
    }


def request(member: str, limit: int) -> retrieval_pb2.GetCandidatesRequest:
    return retrieval_pb2.GetCandidatesRequest(member_id=member, limit=limit)


def sequential(addr: str, members: Sequence[str], limit: int, warmup: int) -> dict[str, Any]:
    times: list[float] = []
    errors = short = 0
    with grpc.insecure_channel(addr, options=MESSAGE_OPTIONS) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        for member in members[:warmup]:
            stub.GetCandidates(request(member, limit), timeout=DEADLINE_S)
        began = time.perf_counter()
        for member in members[warmup:]:
            started = time.perf_counter()
            try:
                reply = stub.GetCandidates(request(member, limit), timeout=DEADLINE_S)
            except grpc.RpcError:
                errors += 1
                continue
            times.append((time.perf_counter() - started) * 1000)
            short += len(reply.candidates) < limit
        wall = time.perf_counter() - began
    return figures(times, wall, errors, short)


async def _concurrent(
    addr: str, members: Sequence[str], limit: int, concurrency: int
) -> dict[str, Any]:
    times: list[float] = []
    counts = {"errors": 0, "short": 0}
    queue = list(members)
    async with grpc.aio.insecure_channel(addr, options=MESSAGE_OPTIONS) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)

        async def worker() -> None:
            while queue:
                member = queue.pop()
                started = time.perf_counter()
                try:
                    reply = await stub.GetCandidates(request(member, limit), timeout=DEADLINE_S)
                except grpc.aio.AioRpcError:
                    counts["errors"] += 1
                    continue
                times.append((time.perf_counter() - started) * 1000)
                counts["short"] += len(reply.candidates) < limit

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return figures(times, wall, counts["errors"], counts["short"])


def concurrent(addr: str, members: Sequence[str], limit: int, concurrency: int) -> dict[str, Any]:
    return asyncio.run(_concurrent(addr, members, limit, concurrency))


def workload(member_ids: Sequence[str], requests: int, seed: int) -> list[str]:
    """Members drawn uniformly from those the shop has, with repeats."""
    rng = random.Random(seed)
    return [rng.choice(member_ids) for _ in range(requests)]
