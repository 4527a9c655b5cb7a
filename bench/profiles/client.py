"""The client side of bench.profiles: gRPC calls to a running profiles service.

    python -m bench.profiles.client --addr HOST:PORT --members N --segment NAME
                                    --condition COND --out OUT.json [options]

A process of its own, so that its memory is the client's alone. In order: RecomputeScores;
a warm-up; a gRPC health check one call at a time (the floor of a call on this server);
GetProfile one call at a time for random known members (sync stub, as a service calling
another does), then for unknown ones; GetProfile from `--concurrency` callers at once
(grpc.aio); PutSegment, GetSegment and ListSegments (each counts over every member);
ExportSegment, and the gateway's CSV export with --gateway, read to the end and dropped
page by page while a thread samples this process's RSS. Every phase records its
wall-clock start and end (`time.time()`), so that the caller can line up the service's
CPU and memory readings with it. Writes JSON to OUT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.fleet import percentile
from bench.profiles import peak_rss_mib, rss_mib
from bench.profiles.synthetic import Members
from services.common.grpc_server import MESSAGE_OPTIONS
from services.gen.recofleet.profiles.v1 import profiles_pb2, profiles_pb2_grpc
from services.profiles.server import SERVICE_NAME

# Counting a segment or exporting it walks every member: minutes on a million.
LONG_CALL_S = 3600.0


def latency_figures(latencies_ns: list[int], wall_s: float) -> dict[str, Any]:
    ordered = sorted(v / 1e6 for v in latencies_ns)
    return {
        "requests": len(ordered),
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "p999_ms": percentile(ordered, 99.9),
        "max_ms": ordered[-1] if ordered else None,
        "mean_ms": sum(ordered) / len(ordered) if ordered else None,
        "requests_per_s": len(ordered) / wall_s if wall_s else None,
        "wall_s": wall_s,
    }


class Phases:
    def __init__(self) -> None:
        self.found: dict[str, dict[str, Any]] = {}

    def run(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        print(f"bench: client: {name}", flush=True)
        started = time.time()
        figures = work()
        self.found[name] = {"started": started, "ended": time.time(), **figures}
        return figures


def sequential(stub: profiles_pb2_grpc.ProfilesServiceStub, ids: list[str]) -> dict[str, Any]:
    latencies: list[int] = []
    sizes: list[tuple[int, int, int]] = []  # (latency, answer bytes, items purchased)
    known = 0
    started = time.perf_counter()
    for member_id in ids:
        t0 = time.perf_counter_ns()
        answer = stub.GetProfile(profiles_pb2.GetProfileRequest(member_id=member_id))
        elapsed = time.perf_counter_ns() - t0
        latencies.append(elapsed)
        sizes.append((elapsed, answer.ByteSize(), len(answer.profile.purchased_item_ids)))
        known += answer.profile.known
    wall = time.perf_counter() - started
    figures = latency_figures(latencies, wall)
    by_size = sorted(sizes, key=lambda s: s[1])
    largest = by_size[-max(1, len(by_size) // 100) :]
    rest = by_size[: -len(largest)] or by_size
    figures |= {
        "answer_bytes_mean": sum(s[1] for s in sizes) / len(sizes),
        "answer_bytes_p99": percentile([s[1] for s in by_size], 99),
        "purchased_mean": sum(s[2] for s in sizes) / len(sizes),
        "purchased_p99": percentile(sorted(s[2] for s in sizes), 99),
        # The 1% largest answers against the rest: does the tail come from big members?
        "largest_1pct_p50_ms": percentile(sorted(s[0] / 1e6 for s in largest), 50),
        "rest_p99_ms": percentile(sorted(s[0] / 1e6 for s in rest), 99),
        "known": known,
        "loadavg": os.getloadavg(),
    }
    return figures


def baseline(health: health_pb2_grpc.HealthStub, count: int) -> dict[str, Any]:
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    latencies: list[int] = []
    started = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter_ns()
        health.Check(request)
        latencies.append(time.perf_counter_ns() - t0)
    return latency_figures(latencies, time.perf_counter() - started)


async def concurrent(addr: str, ids: list[str], callers: int) -> dict[str, Any]:
    latencies: list[int] = []
    queue = iter(ids)
    async with grpc.aio.insecure_channel(addr, options=MESSAGE_OPTIONS) as channel:
        stub = profiles_pb2_grpc.ProfilesServiceStub(channel)

        async def caller() -> None:
            for member_id in queue:
                t0 = time.perf_counter_ns()
                await stub.GetProfile(profiles_pb2.GetProfileRequest(member_id=member_id))
                latencies.append(time.perf_counter_ns() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        wall = time.perf_counter() - started
    return latency_figures(latencies, wall) | {"callers": callers}


def timed_call(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    answer = call()
    return answer, time.perf_counter() - started


class PeakRss:
    """This process's RSS before a block and the highest it reached during it (sampled every
    50 ms by a thread): an export that holds what it streams shows up here."""

    def __enter__(self) -> PeakRss:
        self.before = self.peak = rss_mib() or 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, rss_mib() or 0.0)

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib() or 0.0)

    def figures(self) -> dict[str, float]:
        return {"client_rss_before_mib": self.before, "client_rss_peak_mib": self.peak}


def export(stub: profiles_pb2_grpc.ProfilesServiceStub, name: str) -> dict[str, Any]:
    """ExportSegment read to the end, each page dropped once counted."""
    members = pages = 0
    first_page_s = None
    with PeakRss() as memory:
        started = time.perf_counter()
        request = profiles_pb2.SegmentMembersRequest(name=name)
        for page in stub.ExportSegment(request, timeout=LONG_CALL_S):
            if first_page_s is None:
                first_page_s = time.perf_counter() - started
            members += len(page.members)
            pages += 1
        wall = time.perf_counter() - started
    return {
        "members": members,
        "pages": pages,
        "wall_s": wall,
        "first_page_s": first_page_s,
        "members_per_s": members / wall if wall else None,
        **memory.figures(),
    }


def gateway_export(url: str, key: str, name: str) -> dict[str, Any]:
    """GET /v1/segments/{name}/export as CSV, read to the end chunk by chunk."""
    lines = size = 0
    first_page_s = None
    headers = {"authorization": f"Bearer {key}"}
    with (
        PeakRss() as memory,
        httpx.Client(base_url=url, headers=headers, timeout=LONG_CALL_S) as client,
    ):
        started = time.perf_counter()
        path = f"/v1/segments/{name}/export"
        with client.stream("GET", path, params={"format": "csv"}) as answer:
            answer.raise_for_status()
            for chunk in answer.iter_bytes():
                if first_page_s is None:
                    first_page_s = time.perf_counter() - started
                size += len(chunk)
                lines += chunk.count(b"\n")
        wall = time.perf_counter() - started
    members = lines - 1  # the header line
    return {
        "members": members,
        "bytes": size,
        "wall_s": wall,
        "first_page_s": first_page_s,
        "members_per_s": members / wall if wall else None,
        **memory.figures(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--concurrent-requests", type=int, default=20_000)
    parser.add_argument("--segment", required=True)
    parser.add_argument("--condition", required=True)
    parser.add_argument("--skip-list", action="store_true", help="no ListSegments call")
    parser.add_argument("--latency-only", action="store_true", help="GetProfile phases only")
    parser.add_argument("--gateway", help="the gateway's URL: export through it too")
    parser.add_argument("--gateway-key", help="an access key with profiles:read")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    rng = random.Random(f"client:{args.seed}")

    def ids(count: int) -> list[str]:
        return [Members.member_id(rng.randrange(args.members)) for _ in range(count)]

    phases = Phases()
    channel = grpc.insecure_channel(args.addr, options=MESSAGE_OPTIONS)
    stub = profiles_pb2_grpc.ProfilesServiceStub(channel)
    phases.run("RecomputeScores", lambda: _recompute(stub))
    phases.run("warm-up", lambda: sequential(stub, ids(args.warmup)))
    # The floor: a call that does no work, on the same server and channel.
    health = health_pb2_grpc.HealthStub(channel)
    phases.run("Health.Check sequential", lambda: baseline(health, args.requests // 2))
    phases.run("GetProfile sequential", lambda: sequential(stub, ids(args.requests)))
    unknown = [f"nobody-{n}" for n in range(args.requests // 4)]
    phases.run("GetProfile unknown members", lambda: sequential(stub, unknown))
    wanted = ids(args.concurrent_requests)
    phases.run(
        f"GetProfile x{args.concurrency}",
        lambda: asyncio.run(concurrent(args.addr, wanted, args.concurrency)),
    )
    if not args.latency_only:
        request = profiles_pb2.PutSegmentRequest(
            name=args.segment,
            condition=args.condition,
            description="bench.profiles: about the wanted size, chosen from the generated data",
        )
        phases.run(
            "PutSegment",
            lambda: _segment_figures(
                *timed_call(lambda: stub.PutSegment(request, timeout=LONG_CALL_S))
            ),
        )
        by_name = profiles_pb2.GetSegmentRequest(name=args.segment)
        phases.run(
            "GetSegment",
            lambda: _segment_figures(
                *timed_call(lambda: stub.GetSegment(by_name, timeout=LONG_CALL_S))
            ),
        )
        if not args.skip_list:
            phases.run("ListSegments", lambda: _list_figures(stub))
        phases.run("ExportSegment", lambda: export(stub, args.segment))
        if args.gateway:
            phases.run(
                "gateway export (CSV)",
                lambda: gateway_export(args.gateway, args.gateway_key, args.segment),
            )
    channel.close()
    result = {
        "phases": phases.found,
        "client_peak_rss_mib": peak_rss_mib(),
    }
    args.out.write_text(json.dumps(result))


def _recompute(stub: profiles_pb2_grpc.ProfilesServiceStub) -> dict[str, Any]:
    answer, seconds = timed_call(
        lambda: stub.RecomputeScores(profiles_pb2.RecomputeScoresRequest(), timeout=LONG_CALL_S)
    )
    return {"wall_s": seconds, "population": answer.scoring.population}


def _segment_figures(answer: profiles_pb2.SegmentResponse, seconds: float) -> dict[str, Any]:
    return {"wall_s": seconds, "size": answer.segment.size}


def _list_figures(stub: profiles_pb2_grpc.ProfilesServiceStub) -> dict[str, Any]:
    answer, seconds = timed_call(
        lambda: stub.ListSegments(profiles_pb2.ListSegmentsRequest(), timeout=LONG_CALL_S)
    )
    return {
        "wall_s": seconds,
        "members": answer.members,
        "sizes": {s.name: s.size for s in answer.segments},
    }


if __name__ == "__main__":
    main()
