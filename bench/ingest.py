"""Benchmark ingestion end to end: HTTP batches -> gateway -> ingestion -> bus -> profiles.

    python -m bench.ingest [--bus local|kafka|both] [--events N] [--batch B] [--concurrency C]
                           [--rate R] [--seconds S] [--source CSV] [--json PATH]

For each bus, on a fleet of its own (fresh data dir, free loopback ports; Kafka is
librdkafka's mock cluster started on loopback unless --kafka-bootstrap names a cluster):

1. **Sustained throughput**: N purchase events (one per clean Online Retail invoice line,
   for members new to the fleet) posted in batches of B by C concurrent clients, timed from
   the first POST until every consumer group has committed the last event, that is until
   every profile shows it. Also the rate at which the gateway accepted them.
2. **Latency from POST to profile visible**: a paced load of R events/s for S seconds; every
   100 ms one batch carries a probe event for a member never seen before, and the probe is
   polled on GET /v1/members/{id}/profile until it shows (every 20 ms, backing off to a
   tenth of its age, at most 200 ms). p50/p99/max.

Prints the figures, the CPU each process used and the machine. Never judges a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.fleet import (
    BenchFailed,
    access_key,
    check_alive,
    cli,
    fleet_settings,
    machine,
    percentile,
    process_cpu,
    say,
    table,
    wait_caught_up,
)
from services.common.bus import EventBus, open_bus
from services.common.bus.kafka import KafkaSettings
from services.datasets.online_retail import read_rows
from services.runner import Fleet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv"


@dataclass
class Lines:
    """Clean Online Retail lines as compact tuples, reused as often as N needs."""

    rows: list[tuple[str, str, str, int, float]] = field(default_factory=list)

    @classmethod
    def read(cls, source: Path, limit: int, shuffle: bool = False) -> Lines:
        """The first `limit` lines in file order (an invoice's lines together, as a shop's
        frontend batches them per visitor), or shuffled so that a batch mixes members."""
        lines = cls()
        for row in read_rows(source):
            lines.rows.append(
                (row.member_id, row.invoice_no, row.item_id, row.quantity, row.unit_price)
            )
            if len(lines.rows) >= limit:
                break
        if shuffle:
            random.Random(7).shuffle(lines.rows)
        return lines

    def members_per_batch(self, size: int) -> float:
        """How many members one batch of `size` lines speaks of, on average."""
        counts = [
            len({row[0] for row in self.rows[start : start + size]})
            for start in range(0, len(self.rows), size)
        ]
        return sum(counts) / max(len(counts), 1)

    def events(self, run: str, count: int) -> Iterator[dict[str, Any]]:
        for n in range(count):
            member, invoice, item, quantity, price = self.rows[n % len(self.rows)]
            lap = n // len(self.rows)
            yield {
                "event_id": f"{run}-{n}",
                "type": "purchase",
                "member_id": f"{run}-{lap}-{member}",
                "order_id": f"{lap}-{invoice}",
                "items": [{"item_id": item, "quantity": quantity, "price": price}],
            }


def batches(events: Iterator[dict[str, Any]], size: int) -> list[bytes]:
    out, batch = [], []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            out.append(json.dumps({"events": batch}).encode())
            batch = []
    if batch:
        out.append(json.dumps({"events": batch}).encode())
    return out


async def post_all(fleet: Fleet, bodies: list[bytes], concurrency: int) -> float:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"content-type": "application/json", **access_key(fleet)}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=fleet.gateway_url, timeout=60, limits=limits) as http:

        async def worker() -> None:
            while not queue.empty():
                reply = await http.post("/v1/events", content=queue.get_nowait(), headers=headers)
                if reply.status_code != 202:
                    raise BenchFailed(f"POST /v1/events answered {reply.status_code}: {reply.text}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def throughput(fleet: Fleet, bus: EventBus, bodies: list[bytes], args: Any) -> dict[str, Any]:
    cpu_before = process_cpu(fleet)
    started = time.perf_counter()
    posted_s = asyncio.run(post_all(fleet, bodies, args.concurrency))
    caught = wait_caught_up(bus, fleet, timeout_s=1800)
    total_s = time.perf_counter() - started
    cpu_after = process_cpu(fleet)
    if any(caught.lag_left.values()):
        raise BenchFailed(f"consumers did not catch up: {caught.lag_left}")
    return {
        "events": args.events,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "accepted_per_s": round(args.events / posted_s),
        "end_to_end_per_s": round(args.events / total_s),
        "seconds": round(total_s, 2),
        "caught_up_at_s": caught.by_group,
        "cpu_s": {k: round(cpu_after[k] - cpu_before.get(k, 0.0), 1) for k in cpu_after},
    }


async def paced_latency(fleet: Fleet, lines: Lines, run: str, args: Any) -> dict[str, Any]:
    """Paced batches at args.rate events/s; each 100 ms batch carries one probe."""
    interval = 0.1
    per_batch = max(int(args.rate * interval), 1)
    stream = lines.events(run, per_batch * int(args.seconds / interval) + 1)
    latencies: list[float] = []
    pending: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(
        base_url=fleet.gateway_url, timeout=30, headers=access_key(fleet)
    ) as http:

        async def watch(member_id: str, sent_at: float) -> None:
            while (await http.get(f"/v1/members/{member_id}/profile")).status_code != 200:
                # Every 20 ms at first, then every tenth of the probe's age (at most 200 ms):
                # within 10% of the latency, and a fleet that falls behind is not buried
                # under its own probes (each GET costs the gateway and profiles CPU).
                age = time.perf_counter() - sent_at
                await asyncio.sleep(min(max(0.02, age / 10), 0.2))
            latencies.append(time.perf_counter() - sent_at)

        async def send(body: bytes, probe: str, sent_at: float) -> None:
            reply = await http.post(
                "/v1/events", content=body, headers={"content-type": "application/json"}
            )
            if reply.status_code != 202:
                raise BenchFailed(f"POST /v1/events answered {reply.status_code}")
            pending.append(asyncio.create_task(watch(probe, sent_at)))

        next_at = time.perf_counter()
        senders = []
        for tick in range(int(args.seconds / interval)):
            probe = f"{run}-probe-{tick}"
            events = [next(stream) for _ in range(per_batch - 1)]
            events.append({"type": "view", "member_id": probe, "item_id": "85123A"})
            body = json.dumps({"events": events}).encode()
            senders.append(asyncio.create_task(send(body, probe, time.perf_counter())))
            next_at += interval
            await asyncio.sleep(max(next_at - time.perf_counter(), 0))
        await asyncio.gather(*senders)
        await asyncio.wait_for(asyncio.gather(*pending), timeout=120)
    ordered = sorted(latencies)
    return {
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "probes": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 1),
        "p99_ms": round(percentile(ordered, 99) * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def measure(bus_kind: str, lines: Lines, args: Any) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        settings, env = fleet_settings(tmp)
        env["RECOFLEET_GATEWAY_RATE_LIMIT_PER_S"] = "0"
        kafka = None
        if bus_kind == "kafka":
            from tests.kafka_mock import external_bootstrap, kafka_cluster

            external = external_bootstrap(args.kafka_bootstrap)
            bootstrap = stack.enter_context(kafka_cluster(external))
            kafka = KafkaSettings(bootstrap_servers=bootstrap)
            settings = settings.model_copy(update={"bus": "kafka"})
            env |= {
                "RECOFLEET_BUS": "kafka",
                "RECOFLEET_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "RECOFLEET_PII_SECRET": "bench-pii-secret-0123456789abcdef",
            }
            if not external:
                # The mock cluster holds every fetch for the full max wait even when records
                # are there (a real broker answers once fetch_min_bytes is met); a short
                # wait keeps that artefact of the mock out of the latency figures.
                env["RECOFLEET_KAFKA_FETCH_MAX_WAIT_MS"] = "50"
                # The trainer's catch-up leaves the retrieval group just before the service
                # joins it; on the mock the group waits out the old member's session first.
                env["RECOFLEET_KAFKA_SESSION_TIMEOUT_MS"] = "6000"
                env["RECOFLEET_KAFKA_HEARTBEAT_INTERVAL_MS"] = "1000"
        say(f"{bus_kind}: loading the sample and training")
        cli(env, "load-sample")
        cli(env, "train", "--catch-up")
        bus = open_bus(settings, kafka)
        stack.callback(bus.close)
        fleet = Fleet(settings, env=env)
        say(f"{bus_kind}: starting the fleet")
        fleet.start()
        stack.callback(fleet.stop)
        settle = wait_caught_up(bus, fleet, timeout_s=300)
        say(f"{bus_kind}: caught up with the sample in {settle.seconds:.1f}s; measuring")
        run = uuid.uuid4().hex[:8]
        bodies = batches(lines.events(run, args.events), args.batch)
        results = {"throughput": throughput(fleet, bus, bodies, args)}
        check_alive(fleet)
        results["latency"] = asyncio.run(paced_latency(fleet, lines, f"{run}-p", args))
        return results


def report(results: dict[str, Any]) -> str:
    rows = []
    for bus, got in results["buses"].items():
        t, lat = got["throughput"], got["latency"]
        rows.append(
            [
                bus,
                t["events"],
                t["accepted_per_s"],
                t["end_to_end_per_s"],
                lat["rate_per_s"],
                lat["probes"],
                lat["p50_ms"],
                lat["p99_ms"],
                lat["max_ms"],
            ]
        )
    headers = [
        "bus",
        "events",
        "accepted/s",
        "end-to-end/s",
        "paced/s",
        "probes",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]
    cpu = [
        [bus, *(f"{k}={v}" for k, v in got["throughput"]["cpu_s"].items() if v >= 0.5)]
        for bus, got in results["buses"].items()
    ]
    m = results["machine"]
    return "\n".join(
        [
            f"machine: {m['cpu_model']}, {m['cpus_usable']} CPUs, {m['ram_gib']} GiB, "
            f"{m['python']}, {m['os']}",
            f"data: {results['source']} ({results['lines']} clean lines, reused as needed)",
            f"order: {results['order']}, {results['members_per_batch']} members per batch "
            "on average (the bus carries one record per member per batch)",
            "",
            table(headers, rows),
            "",
            "CPU seconds during the throughput run:",
            *("  " + "  ".join(map(str, row)) for row in cpu),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bus", choices=["local", "kafka", "both"], default="both")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=float, default=5000, help="paced events/s for latency")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument(
        "--shuffle", action="store_true", help="mix members in every batch (the worst case)"
    )
    parser.add_argument("--kafka-bootstrap", help="a real cluster instead of the mock")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"no Online Retail CSV at {args.source} (--source)", file=sys.stderr)
        return 2
    say(f"reading {args.source}")
    lines = Lines.read(args.source, args.events, args.shuffle)
    buses = ["local", "kafka"] if args.bus == "both" else [args.bus]
    results: dict[str, Any] = {
        "machine": machine(),
        "source": str(args.source),
        "lines": len(lines.rows),
        "order": "shuffled" if args.shuffle else "file",
        "members_per_batch": round(lines.members_per_batch(args.batch), 1),
        "buses": {},
    }
    try:
        for bus in buses:
            results["buses"][bus] = measure(bus, lines, args)
    except BenchFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
