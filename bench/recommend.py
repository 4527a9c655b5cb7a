"""Benchmark the gateway's hot paths on a fleet of its own.

    python -m bench.recommend [--requests N] [--concurrency C] [--source PATH] [--json PATH]

Loads the bundled sample (or the Online Retail CSV at --source) into a fresh temporary
data dir, trains, starts every service and the gateway on free loopback ports, waits
until /readyz answers and the consumers have caught up with the bus, then measures with
a fixed number of concurrent keep-alive connections:

* GET  /v1/members/{id}/recommendations?limit=10  known members and unknown ones, mixed
* GET  /v1/items/{id}/similar?limit=10
* POST /v1/events                                  batches of 100 synthetic events

and prints latency percentiles, throughput, errors and degraded answers, the CPU each
process used per phase, the machine and the data size. Timings are reported, never
judged: the exit code is non-zero only when the fleet fails (does not start, a process
dies) or more than 1% of the measured requests fail or of the events sent are rejected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from bench.fleet import (
    BenchFailed,
    access_key,
    check_alive,
    cli,
    code_version,
    fleet_settings,
    machine,
    percentile,
    process_cpu,
    process_rss_mib,
    say,
    table,
    wait_caught_up,
)
from bench.load import ceiling_app, open_loop, run_wrk, wrk_available
from services.common.bus import EventBus, open_bus
from services.common.settings import FleetSettings
from services.loading import read_source, source_name
from services.runner import SERVICES, Fleet, FleetFailed

MAX_ERROR_RATE = 0.01
SOAK_SAMPLE_S = 30.0
LIMIT = 10


@dataclass
class Data:
    source: str
    members: list[str]
    items: list[tuple[str, float]]  # (item_id, price)
    events: int
    lines: int

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "members": len(self.members),
            "items": len(self.items),
            "events": self.events,
            "item_lines": self.lines,
        }


def read_data(source: Path | None) -> Data:
    catalog, events = read_source(source)
    members = sorted({e.member_id for e in events})
    items = [(i.item_id, i.price or 1.0) for i in catalog]
    lines = sum(len(e.lines()) for e in events)
    return Data(source_name(source), members, items, len(events), lines)


# --- the workload ------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    kind: str
    url: str
    body: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    kind: str
    ms: float
    status: int
    error: str | None
    degraded: bool = False
    short: bool = False  # fewer items than asked for
    accepted: int = 0
    rejected: int = 0


def recommendation_calls(rng: random.Random, data: Data, n: int, unknown: float) -> list[Call]:
    calls = []
    for _ in range(n):
        if rng.random() < unknown:
            kind, member = "unknown", f"bench-new-{uuid.UUID(int=rng.getrandbits(128))}"
        else:
            kind, member = "known", rng.choice(data.members)
        calls.append(Call(kind, f"/v1/members/{quote(member, safe='')}/recommendations"))
    return calls


def similar_calls(rng: random.Random, data: Data, n: int) -> list[Call]:
    return [
        Call("similar", f"/v1/items/{quote(rng.choice(data.items)[0], safe='')}/similar")
        for _ in range(n)
    ]


EVENT_MIX = (("view", 0.6), ("click", 0.1), ("add_to_cart", 0.2), ("purchase", 0.1))


def event_calls(rng: random.Random, data: Data, batches: int, size: int) -> list[Call]:
    """Batches of synthetic frontend events from known members about catalog items."""
    kinds = [kind for kind, _ in EVENT_MIX]
    weights = [weight for _, weight in EVENT_MIX]
    calls = []
    for _ in range(batches):
        events: list[dict[str, Any]] = []
        for kind in rng.choices(kinds, weights, k=size):
            member = rng.choice(data.members)
            item, price = rng.choice(data.items)
            event: dict[str, Any] = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "type": kind,
                "member_id": member,
                "session_id": f"bench-s-{member}",
                "item_id": item,
            }
            if kind == "purchase":
                quantity = rng.randint(1, 6)
                event["items"] = [{"item_id": item, "quantity": quantity, "price": price}]
                event["order_id"] = f"bench-o-{event['event_id']}"
                event["revenue"] = round(quantity * price, 2)
                event["currency"] = "GBP"
            events.append(event)
        calls.append(Call("events", "/v1/events", json.dumps({"events": events}).encode()))
    return calls


async def execute(client: httpx.AsyncClient, call: Call, due: float | None = None) -> Outcome:
    """Make the call; its latency counts from `due` (when an open-loop schedule wanted it
    sent) when given, else from now."""
    started = time.perf_counter() if due is None else due
    try:
        if call.body is None:
            response = await client.get(call.url, params={"limit": LIMIT})
        else:
            response = await client.post(
                call.url, content=call.body, headers={"content-type": "application/json"}
            )
    except httpx.HTTPError as exc:
        ms = (time.perf_counter() - started) * 1000
        return Outcome(call.kind, ms, 0, f"{type(exc).__name__}: {exc}")
    ms = (time.perf_counter() - started) * 1000
    if response.status_code not in (200, 202):
        return Outcome(call.kind, ms, response.status_code, f"HTTP {response.status_code}")
    body = response.json()
    if call.body is not None:
        accepted, rejected = int(body.get("accepted", 0)), len(body.get("rejected", []))
        return Outcome(call.kind, ms, response.status_code, None, False, False, accepted, rejected)
    short = len(body.get("items", [])) < LIMIT
    return Outcome(call.kind, ms, response.status_code, None, bool(body.get("degraded")), short)


async def run_calls(
    client: httpx.AsyncClient, calls: Sequence[Call], concurrency: int
) -> tuple[list[Outcome], float]:
    """Run the calls through `concurrency` workers; return the outcomes and the wall time."""
    pending = iter(calls)
    outcomes: list[Outcome] = []

    async def worker() -> None:
        for call in pending:  # one shared iterator: each call is taken by one worker
            outcomes.append(await execute(client, call))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes, time.perf_counter() - started


async def degraded_by_service(client: httpx.AsyncClient) -> Counter[str]:
    """The gateway's own count of fallbacks, per service that failed or overran."""
    counts: Counter[str] = Counter()
    text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("recofleet_gateway_degraded_total{"):
            labels, value = line.rsplit(" ", 1)
            service = labels.split('service="', 1)[1].split('"', 1)[0]
            counts[service] += int(float(value))
    return counts


# --- figures -----------------------------------------------------------------------------


def summarize(outcomes: Iterable[Outcome], wall_s: float | None) -> dict[str, Any]:
    done = list(outcomes)
    ok = sorted(o.ms for o in done if o.error is None)
    figures: dict[str, Any] = {
        "requests": len(done),
        "errors": sum(1 for o in done if o.error is not None),
        "degraded": sum(1 for o in done if o.degraded),
        "short": sum(1 for o in done if o.short),
        "p50_ms": percentile(ok, 50),
        "p95_ms": percentile(ok, 95),
        "p99_ms": percentile(ok, 99),
        "max_ms": ok[-1] if ok else math.nan,
        "mean_ms": sum(ok) / len(ok) if ok else math.nan,
        "wall_s": wall_s,
        "requests_per_s": len(done) / wall_s if wall_s else None,
    }
    accepted = sum(o.accepted for o in done)
    if accepted or any(o.kind == "events" for o in done):
        figures["events_accepted"] = accepted
        figures["events_rejected"] = sum(o.rejected for o in done)
        figures["events_per_s"] = accepted / wall_s if wall_s else None
    errors = Counter(o.error for o in done if o.error is not None)
    figures["error_kinds"] = dict(errors.most_common(5))
    return figures


LATENCY_COLUMNS = ("requests", "errors", "degraded", "p50 ms", "p95 ms", "p99 ms", "max ms")


def report(results: dict[str, Any]) -> str:
    m, d, s = results["machine"], results["data"], results["setup"]
    out = [
        "recofleet gateway benchmark",
        "",
        f"machine  {m['cpu_model']} @ {m['cpu_mhz'] or '?'} MHz, {m['cpus_usable']} usable CPUs "
        f"({m['cpus_listed']} listed, cgroup cpu.max {m['cgroup_cpu_max'] or 'n/a'}), "
        f"{m['ram_gib']} GiB RAM",
        f"         {m['os']}, Linux {m['kernel']} {m['arch']}, {m['python']}",
        f"         load average before the run {s['loadavg_before']}",
        f"data     {d['source']}",
        f"         {d['members']:,} members, {d['items']:,} items, {d['events']:,} events "
        f"({d['item_lines']:,} item lines)",
        f"code     {results['code']}",
        f"fleet    {results['fleet']}",
        f"load     {s['load_s']:.1f}s   train {s['train_s']:.1f}s   start {s['start_s']:.1f}s   "
        f"consumers caught up {s['catch_up_s']:.1f}s after start",
        f"         {s['train_output']}",
        f"run      concurrency {results['concurrency']}, warm-up {results['warmup']} requests "
        f"per endpoint, unknown members {results['unknown_share']:.0%}",
        "",
    ]
    rows = []
    for name, fig in results["phases"].items():
        rows.append(
            [
                name,
                fig["requests"],
                fig["errors"],
                fig["degraded"],
                fig["p50_ms"],
                fig["p95_ms"],
                fig["p99_ms"],
                fig["max_ms"],
                fig["requests_per_s"],
                fig.get("events_per_s"),
            ]
        )
    out.append(table(["endpoint", *LATENCY_COLUMNS, "req/s", "events/s"], rows))
    ev = results["phases"]["POST /v1/events"]
    drain = results["events_drain"]
    out += [
        "",
        f"events   {ev['events_accepted']:,} accepted, {ev['events_rejected']:,} rejected; "
        f"consumers caught up {drain['seconds']:.1f}s after the last batch was accepted "
        f"({', '.join(f'{g} {t}s' for g, t in drain['by_group'].items())})"
        + (f" (still behind: {drain['lag_left']})" if any(drain["lag_left"].values()) else ""),
        f"short    answers with fewer than {LIMIT} items: "
        + ", ".join(f"{n} {f['short']}" for n, f in results["phases"].items() if "GET" in n),
        f"degraded by service (gateway /metrics, measured phases): "
        f"{results['degraded_by_service'] or 'none'}",
        "",
        "CPU seconds per process and phase (share of one core over the phase's wall time;",
        f"the machine has {m['cpus_usable']} cores, so {m['cpus_usable']:.0%} is all of it):",
    ]
    phases = list(results["cpu"])
    names = list(next(iter(results["cpu"].values())))
    idle = results["idle"]
    cpu_rows = []
    for name in names:
        used = idle["cpu"][name]
        row: list[Any] = [name, f"{used:.1f}s {used / idle['seconds']:4.0%}"]
        for phase in phases:
            used = results["cpu"][phase][name]
            wall = results["phases"][phase]["wall_s"]
            row.append(f"{used:.1f}s {used / wall:4.0%}")
        row.append(results["rss_mib"].get(name, ""))
        cpu_rows.append(row)
    out.append(table(["process", f"idle {idle['seconds']:.0f}s", *phases, "RSS MiB"], cpu_rows))
    out += ["", "CPU milliseconds per request (per batch of events for POST):"]
    fleet_names = [n for n in names if n in SERVICES or n == "gateway"]
    per_request = []
    for name in [*fleet_names, "fleet total", "bench client"]:
        row = [name]
        for phase in phases:
            used = results["cpu"][phase]
            seconds = sum(used[n] for n in fleet_names) if name == "fleet total" else used[name]
            row.append(seconds * 1000 / results["phases"][phase]["requests"])
        per_request.append(row)
    out.append(table(["process", *phases], per_request))
    out += peak_lines(results.get("peak") or {})
    out += soak_lines(results.get("soak") or {})
    errors = {n: f["error_kinds"] for n, f in results["phases"].items() if f["error_kinds"]}
    if errors:
        out += ["", f"errors   {errors}"]
    return "\n".join(out)


def peak_lines(peak: dict[str, Any]) -> list[str]:
    if not peak:
        return []
    fleet, ceiling = peak["fleet"], peak["ceiling"]
    cpu = peak["cpu_ms_per_request"]
    return [
        "",
        f"peak     wrk, {peak['connections']} connections, recommendations "
        f"(answer of {peak['answer_bytes']:,} bytes):",
        f"         fleet   {fleet['requests_per_s']:8.1f}/s  p50 {fleet['p50_ms']:.1f} ms  "
        f"p99 {fleet['p99_ms']:.1f} ms  non-2xx {fleet['non_2xx']}",
        f"         ceiling {ceiling['requests_per_s']:8.1f}/s  p50 {ceiling['p50_ms']:.1f} ms  "
        f"p99 {ceiling['p99_ms']:.1f} ms  (bare FastAPI app, same uvicorn, same answer)",
        f"         ratio   {peak['ratio']:.3f}",
        "         fleet CPU ms per recommendation at the peak: "
        + ", ".join(f"{n} {v:.2f}" for n, v in cpu.items())
        + f"; total {sum(cpu.values()):.2f}",
    ]


def soak_lines(soak: dict[str, Any]) -> list[str]:
    if not soak:
        return []
    out = [
        "",
        f"soak     {soak['rate_per_s']:g} recommendations/s for {soak['seconds']:g}s; RSS MiB "
        f"every {SOAK_SAMPLE_S:g}s (first -> last, max), p99 ms per sample "
        + " ".join(f"{v:.0f}" for v in soak["p99_ms_per_sample"]),
    ]
    for name, series in soak["rss_mib"].items():
        out.append(
            f"         {name:14} {series[0]:7.1f} -> {series[-1]:7.1f}  (max {max(series):.1f})"
        )
    return out


# --- the run -----------------------------------------------------------------------------


async def measure(
    fleet: Fleet, bus: EventBus, data: Data, args: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    c = args.concurrency
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    phases: dict[str, dict[str, Any]] = {}
    cpu: dict[str, dict[str, float]] = {}
    async with httpx.AsyncClient(
        base_url=fleet.gateway_url, timeout=args.timeout, limits=limits, headers=access_key(fleet)
    ) as client:
        say(f"warming up ({args.warmup} requests per endpoint)")
        await run_calls(client, recommendation_calls(rng, data, args.warmup, args.unknown), c)
        await run_calls(client, similar_calls(rng, data, args.warmup), c)
        warm_batches = max(1, args.warmup // 20)
        await run_calls(client, event_calls(rng, data, warm_batches, args.batch_size), c)
        await asyncio.to_thread(wait_caught_up, bus, fleet, args.drain_timeout)
        # What the fleet burns with no requests at all (health checks, bus polling, timers).
        say(f"measuring the idle fleet for {args.idle:g}s")
        before = process_cpu(fleet)
        idle_started = time.perf_counter()
        await asyncio.sleep(args.idle)
        idle_wall = time.perf_counter() - idle_started
        after = process_cpu(fleet)
        idle = {"seconds": idle_wall, "cpu": {p: after[p] - before.get(p, 0.0) for p in after}}
        degraded_before = await degraded_by_service(client)

        workload = [
            ("GET recommendations", recommendation_calls(rng, data, args.requests, args.unknown)),
            ("GET similar", similar_calls(rng, data, args.requests)),
            ("POST /v1/events", event_calls(rng, data, args.event_batches, args.batch_size)),
        ]
        drain: dict[str, Any] = {}
        for name, calls in workload:
            say(f"measuring {name}: {len(calls)} requests at concurrency {c}")
            before = process_cpu(fleet)
            outcomes, wall = await run_calls(client, calls, c)
            after = process_cpu(fleet)
            cpu[name] = {p: after[p] - before.get(p, 0.0) for p in after}
            phases[name] = summarize(outcomes, wall)
            if name == "GET recommendations":
                for kind in ("known", "unknown"):
                    subset = [o for o in outcomes if o.kind == kind]
                    phases[f"  {kind} members"] = summarize(subset, None)
            check_alive(fleet)
            if name == "POST /v1/events":
                caught = await asyncio.to_thread(wait_caught_up, bus, fleet, args.drain_timeout)
                drain = asdict(caught)
        degraded_after = await degraded_by_service(client)
        answer = (await client.get(recommendation_calls(rng, data, 1, 0.0)[0].url)).json()
    if args.rate > 0:
        name = f"open loop {args.rate:g}/s"
        say(f"measuring {name} for {args.open_seconds:g}s")
        phases[name], cpu[name], lag = await open_loop_phase(fleet, rng, data, args)
        phases[name]["generator_lag_ms"] = lag * 1000
    peak = await asyncio.to_thread(peak_and_ceiling, fleet, rng, data, answer, args)
    soak = await soak_phase(fleet, rng, data, args) if args.soak > 0 else {}
    # The known/unknown sub-rows right under the recommendations row.
    ordered = {
        n: phases[n] for n in ("GET recommendations", "  known members", "  unknown members")
    }
    ordered |= {n: f for n, f in phases.items() if n not in ordered}
    return {
        "phases": ordered,
        "cpu": cpu,
        "events_drain": drain,
        "idle": idle,
        "degraded_by_service": dict(degraded_after - degraded_before),
        "peak": peak,
        "soak": soak,
    }


async def soak_phase(
    fleet: Fleet, rng: random.Random, data: Data, args: argparse.Namespace
) -> dict[str, Any]:
    """Open-loop recommendations at --rate for --soak seconds, each process's RSS read
    every SOAK_SAMPLE_S: does any of them grow?"""
    say(f"soaking: {args.rate:g}/s for {args.soak:g}s, RSS every {SOAK_SAMPLE_S:g}s")
    samples = [process_rss_mib(fleet)]
    p99s: list[float] = []
    chunks = max(1, round(args.soak / SOAK_SAMPLE_S))
    chunk_args = argparse.Namespace(**{**vars(args), "open_seconds": args.soak / chunks})
    for _ in range(chunks):
        figures, _, _ = await open_loop_phase(fleet, rng, data, chunk_args)
        p99s.append(figures["p99_ms"])
        samples.append(process_rss_mib(fleet))
        check_alive(fleet)
    names = [n for n in samples[0] if all(n in s for s in samples)]
    return {
        "seconds": args.soak,
        "rate_per_s": args.rate,
        "p99_ms_per_sample": p99s,
        "rss_mib": {n: [round(s[n], 1) for s in samples] for n in names},
    }


async def open_loop_phase(
    fleet: Fleet, rng: random.Random, data: Data, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, float], float]:
    """Recommendations at a constant arrival rate: figures, CPU per process, generator lag."""
    calls = iter(recommendation_calls(rng, data, int(args.rate * args.open_seconds), args.unknown))
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(
        base_url=fleet.gateway_url, timeout=args.timeout, limits=limits, headers=access_key(fleet)
    ) as client:

        async def send(due: float) -> Outcome:
            return await execute(client, next(calls), due)

        before = process_cpu(fleet)
        outcomes, wall, lag = await open_loop(send, args.rate, args.open_seconds)
        after = process_cpu(fleet)
    return summarize(outcomes, wall), {p: after[p] - before.get(p, 0.0) for p in after}, lag


def peak_and_ceiling(
    fleet: Fleet, rng: random.Random, data: Data, answer: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Recommendations/s at the peak (wrk), the fleet's CPU per recommendation there, and
    the same wrk against a bare app of the same web stack serving `answer`."""
    if args.peak_seconds <= 0:
        return {}
    if not wrk_available():
        say("wrk is not installed (apt-get install wrk): no peak or ceiling figures")
        return {}
    paths = [f"{c.url}?limit={LIMIT}" for c in recommendation_calls(rng, data, 5000, args.unknown)]
    c, seconds = args.peak_connections, args.peak_seconds
    say(f"measuring the peak: wrk, {c} connections, {seconds:g}s")
    key = fleet.env["RECOFLEET_ADMIN_KEY"]
    before = process_cpu(fleet)
    fleet_peak = run_wrk(fleet.gateway_url, paths, key, c, seconds)
    after = process_cpu(fleet)
    used = {p: after[p] - before.get(p, 0.0) for p in after}
    check_alive(fleet)
    say("measuring the ceiling: a bare FastAPI app serving the same answer")
    with ceiling_app(answer) as (url, _):
        ceiling = run_wrk(url, paths, key, c, seconds)
    fleet_names = [n for n in used if n in SERVICES or n == "gateway"]
    return {
        "connections": c,
        "fleet": asdict(fleet_peak),
        "ceiling": asdict(ceiling),
        "ratio": fleet_peak.requests_per_s / ceiling.requests_per_s,
        "answer_bytes": len(json.dumps(answer)),
        "cpu_ms_per_request": {
            n: used[n] * 1000 / max(1, fleet_peak.requests) for n in fleet_names
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.recommend", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=2000, help="per GET endpoint")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--source", type=Path, help="Online Retail CSV (default: bundled sample)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--warmup", type=int, default=200, help="requests per endpoint first")
    parser.add_argument("--event-batches", type=int, default=200, help="POST /v1/events calls")
    parser.add_argument("--batch-size", type=int, default=100, help="events per POST")
    parser.add_argument("--unknown", type=float, default=0.2, help="share of unknown members")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--drain-timeout", type=float, default=600.0)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measured")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data dir")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="open-loop recommendations per second (0: off)"
    )
    parser.add_argument("--open-seconds", type=float, default=20.0)
    parser.add_argument("--peak-connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--peak-seconds", type=float, default=10.0, help="per wrk run (0: off)")
    parser.add_argument(
        "--soak", type=float, default=0.0, help="seconds of open-loop load, RSS sampled (0: off)"
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.event_batches < 1:
        parser.error("--requests, --concurrency and --event-batches must be at least 1")

    source = args.source or FleetSettings().sample_source
    if source is not None and not source.is_file():
        print(f"bench: no Online Retail CSV at {source}", file=sys.stderr)
        return 1
    data_dir = Path(tempfile.mkdtemp(prefix="recofleet-bench-"))
    settings, env = fleet_settings(data_dir)
    fleet = Fleet(settings, env=env)
    failed = True
    try:
        results = run(fleet, settings, env, source, args)
        failed = False
    except (BenchFailed, FleetFailed, FileNotFoundError, subprocess.TimeoutExpired) as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; stopping the fleet", file=sys.stderr)
        return 130
    finally:
        fleet.stop()
        if failed or args.keep_data:
            say(f"data dir and logs kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)

    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"figures written to {args.json}")
    measured = [f for n, f in results["phases"].items() if not n.startswith(" ")]
    requests = sum(f["requests"] for f in measured)
    errors = sum(f["errors"] for f in measured)
    if errors > MAX_ERROR_RATE * requests:
        print(f"bench: {errors} of {requests} requests failed (over 1%)", file=sys.stderr)
        return 1
    events = results["phases"]["POST /v1/events"]
    sent = args.event_batches * args.batch_size
    if events["events_rejected"] > MAX_ERROR_RATE * sent:
        # The benchmark sends only valid events: rejections mean something is wrong.
        print(f"bench: {events['events_rejected']} of {sent} events rejected", file=sys.stderr)
        return 1
    return 0


def run(
    fleet: Fleet,
    settings: FleetSettings,
    env: dict[str, str],
    source: Path | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    loadavg = os.getloadavg()  # before we add any load: is something else busy?
    version = code_version()
    say(f"reading {source_name(source)}")
    data = read_data(source)
    say(f"{len(data.members)} members, {len(data.items)} items, {data.events} events")
    say(f"loading into {settings.data_dir}")
    load_args = ["load-sample", *(["--source", str(source)] if source else [])]
    _, load_s = cli(env, *load_args)
    say("training")
    train_out, train_s = cli(env, "train")
    say("starting the fleet")
    started = time.perf_counter()
    fleet.start(timeout_s=args.start_timeout)
    start_s = time.perf_counter() - started
    bus = open_bus(settings)
    try:
        say("waiting for the consumers to catch up with the bus")
        caught = wait_caught_up(bus, fleet, args.drain_timeout)
        if any(caught.lag_left.values()):
            say(
                f"consumers behind after {caught.seconds:.0f}s: {caught.lag_left}; measuring anyway"
            )
        measured = asyncio.run(measure(fleet, bus, data, args))
        rss = process_rss_mib(fleet)
    finally:
        bus.close()
    return {
        "machine": machine(),
        "data": data.summary(),
        "code": version,
        "fleet": (
            f"local bus ({settings.bus_partitions} partitions, fsync "
            f"{'on' if settings.bus_fsync else 'off'})"
            if settings.bus == "local"
            else f"{settings.bus} bus"
        )
        + f", embedded stores unless RECOFLEET_* says otherwise, log level {settings.log_level}"
        ", one process per service",
        "setup": {
            "loadavg_before": [round(v, 2) for v in loadavg],
            "load_s": load_s,
            "train_s": train_s,
            "start_s": start_s,
            "catch_up_s": caught.seconds,
            "train_output": train_out.splitlines()[-1] if train_out else "",
        },
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "unknown_share": args.unknown,
        "requests_per_endpoint": args.requests,
        "event_batches": args.event_batches,
        "batch_size": args.batch_size,
        **measured,
        "rss_mib": rss,
    }


if __name__ == "__main__":
    sys.exit(main())
