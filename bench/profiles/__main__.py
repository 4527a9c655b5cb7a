"""Benchmark profiles at scale: load, disk, memory, GetProfile latency, a large segment.

    python -m bench.profiles [--members N] [--quick] [--db sqlite|postgresql|both]
                             [--source CSV] [--requests R] [--concurrency C] [--json PATH]

1. Fits the Online Retail distributions (bench/profiles/synthetic.py) from the full CSV,
   or from the bundled sample when the CSV is missing.
2. For each database (a SQLite file in a temporary directory; a schema of its own on the
   PostgreSQL at --postgres-url, dropped afterwards): loads N synthetic members in a
   process of its own through `SqlProfileStore.apply_events`, in batches of the consumer's
   size (bench/profiles/load.py), and reads the disk used and that process's peak RSS.
3. Starts the profiles service on that store as the fleet does (`python -m services.profiles`
   with RECOFLEET_PROFILES_DATABASE_URL, RECOFLEET_DATA_DIR and RECOFLEET_PROFILES_ADDR),
   waits for gRPC health, and runs the client (bench/profiles/client.py) in another
   process: RecomputeScores, GetProfile one at a time and from concurrent callers, then a
   segment of about --segment-size members (its condition chosen from the generated data):
   PutSegment, GetSegment, ListSegments and ExportSegment. Meanwhile it samples the
   service's RSS and CPU every 0.1 s, to give the service's CPU per request and its
   memory during each phase.
4. Prints the figures and the machine; never judges them. Exits non-zero only when a step
   fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.fleet import BenchFailed, code_version, machine, publish, say, table, work_dir
from bench.profiles import peak_rss_mib
from bench.profiles.processes import (
    Sampler,
    Store,
    gateway,
    postgres_store,
    profiles_service,
    run_child,
    sqlite_store,
    wait_quiet,
)
from bench.profiles.steps import breakdown
from bench.profiles.synthetic import Shape
from services.loading import read_source, source_name

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SEGMENT = "bench-big-recent-spenders"
# Members with an order within this many days enter the segment (with a spend threshold).
SEGMENT_RECENT_DAYS = 90.0
QUICK_MEMBERS = 20_000


def segment_condition(load: dict[str, Any]) -> str:
    if load["segment_spend"] is not None:
        return (
            f"recency_days <= {SEGMENT_RECENT_DAYS:g} and monetary >= {load['segment_spend']:.2f}"
        )
    return f"monetary >= {load['segment_spend_any']:.2f}"


def load_store(store: Store, shape_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    say(f"{store.kind}: loading {args.members:,} members ({store.version})")
    options = {
        "url": store.url,
        "shape": shape_path,
        "members": args.members,
        "seed": args.seed,
        "views-per-visit": args.views_per_visit,
        "browse-per-order": args.browse_per_order,
        "segment-size": args.segment_size,
        "segment-recent-days": SEGMENT_RECENT_DAYS,
    }
    flags = [part for name, value in options.items() for part in (f"--{name}", str(value))]
    load = run_child("bench.profiles.load", flags, timeout_s=args.timeout)
    load["disk"] = store.disk()
    say(
        f"{store.kind}: {load['applied']:,} events in {load['load_s']:.0f}s, "
        f"{sum(load['disk'].values()) / 2**20:,.0f} MiB on disk"
    )
    return load


def serve(
    store: Store, load: dict[str, Any], work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Start the profiles service (and the gateway) on the loaded store and run the client."""
    condition = segment_condition(load)
    sampler = Sampler()
    with profiles_service(store, work / f"service-{store.kind}") as (addr, process):
        sampler.watch("profiles", process.pid)
        started = sampler.read()[1].get("profiles", (None, None))[0]
        with gateway(addr, work / f"gateway-{store.kind}") as (url, key, gateway_process):
            sampler.watch("gateway", gateway_process.pid)
            say(f"{store.kind}: profiles service serving on {addr}, gateway on {url}")
            idle = wait_quiet(args.wait_quiet)
            sampler.start()
            options = {
                "addr": addr,
                "members": args.members,
                "seed": args.seed,
                "warmup": args.warmup,
                "requests": args.requests,
                "concurrency": args.concurrency,
                "concurrent-requests": args.concurrent_requests,
                "segment": SEGMENT,
                "condition": condition,
                "gateway": url,
                "gateway-key": key,
            }
            flags = [p for name, value in options.items() for p in (f"--{name}", str(value))]
            if args.latency_only:
                flags.append("--latency-only")
            client = run_child(
                "bench.profiles.client",
                flags,
                timeout_s=args.timeout,
                started=lambda pid: sampler.watch("client", pid),
            )
            sampler.stop()
            say(f"{store.kind}: timing GetProfile's steps in process")
            steps = breakdown(store.url, args.members, args.steps, args.seed)
            peaks = {
                "profiles": peak_rss_mib(process.pid),
                "gateway": peak_rss_mib(gateway_process.pid),
            }
    for figures in client["phases"].values():
        if "started" in figures:
            figures["processes"] = sampler.window(figures["started"], figures["ended"])
    return {
        "condition": condition,
        "idle_before": idle,
        "client": client,
        "steps": steps,
        "service_rss_started_mib": started,
        "peak_rss_mib": peaks,
    }


def measure(
    kind: str,
    shape_path: Path | None,
    work: Path,
    args: argparse.Namespace,
    earlier: dict[str, Any] | None,
) -> dict[str, Any]:
    """Load (or take the store an earlier run kept), serve and measure one database."""
    if earlier is None:
        store = (
            sqlite_store(work / "sqlite") if kind == "sqlite" else postgres_store(args.postgres_url)
        )
    elif kind == "sqlite":
        store = sqlite_store(Path(earlier["location"]))
    else:
        store = postgres_store(args.postgres_url, earlier["location"])
    try:
        if earlier is not None:
            load = earlier["load"]
        elif shape_path is not None:
            load = load_store(store, shape_path, args)
        else:
            raise BenchFailed("nothing to load the store from")
        return {
            "store": store.version,
            "location": store.location,
            "load": load,
            **serve(store, load, work, args),
        }
    finally:
        if args.keep_data:
            say(f"{kind}: kept {store.url}")
        else:
            store.drop()


# --- the report --------------------------------------------------------------------------


def mib(size: float | None) -> float | None:
    return None if size is None else size / 2**20


def _rss(window: dict[str, Any], name: str) -> str:
    found = window.get(name) or {}
    before, peak = found.get("rss_before_mib"), found.get("rss_peak_mib")
    return "-" if before is None or peak is None else f"{before:.0f} -> {peak:.0f}"


def _cpu_ms(window: dict[str, Any], name: str, requests: int) -> float | None:
    cpu = (window.get(name) or {}).get("cpu_s")
    return None if cpu is None else cpu * 1000 / requests


def _cores(window: dict[str, Any], name: str) -> float | None:
    cpu, seconds = (window.get(name) or {}).get("cpu_s"), window.get("seconds")
    return None if cpu is None or not seconds else cpu / seconds


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    shape = results["shape"]
    out = [
        f"machine  {m['cpu_model']}, {m['cpus_usable']} cores usable of {m['cpus_listed']}, "
        f"{m['ram_gib']} GiB RAM, cgroup cpu.max {m['cgroup_cpu_max'] or '-'}",
        f"         {m['os']}, Linux {m['kernel']} {m['arch']}, {m['python']}",
        f"         {'; '.join(results['stores'])}",
        f"         load average before the run {results['loadavg_before']}",
        f"code     {results['code']}",
        f"data     {results['members']:,} synthetic members, seed {results['seed']}, fitted from "
        f"{shape['source']} ({shape['real members']:,} real members)",
        "         "
        + ", ".join(f"{k} {v}" for k, v in shape.items() if k not in ("source", "real members")),
        f"         views: {results['views_per_visit']:g} per visit, "
        f"{results['browse_per_order']:g} browse-only visits per order (assumed: no views in "
        "the data)",
        f"run      {results['wall_s'] / 60:.1f} min in all"
        + (
            f"; serving only, on the stores of {results['serve_only']}"
            if results["serve_only"]
            else ""
        ),
        "",
    ]
    dbs = results["databases"]
    rows = []
    for kind, r in dbs.items():
        load = r["load"]
        rows.append(
            [
                kind,
                load["members"],
                load["applied"],
                load["order lines"],
                load["load_s"],
                load["apply_s"],
                load["applied"] / load["apply_s"],
                load["recompute_s"],
                mib(sum(load["disk"].values())),
                load["peak_rss_mib"],
            ]
        )
    headers = ["load", "members", "events", "order lines", "wall s", "in store s", "events/s"]
    out.append(table([*headers, "scores s", "disk MiB", "peak RSS MiB"], rows))
    out.append("")
    for kind, r in dbs.items():
        biggest = sorted(r["load"]["disk"].items(), key=lambda kv: -kv[1])[:5]
        out.append(f"disk {kind:<10} " + ", ".join(f"{n} {mib(s):,.0f} MiB" for n, s in biggest))
    for kind, r in dbs.items():
        rates, before = [], (0, 0, 0.0)
        for point in r["load"]["progress"]:
            rates.append((point[1] - before[1]) / max(point[2] - before[2], 1e-9))
            before = point
        if rates:
            out.append(
                f"rate {kind:<10} events/s in the store over each tenth of the members: "
                + " ".join(f"{rate:,.0f}" for rate in rates)
            )
    out.append("")

    rows = []
    for kind, r in dbs.items():
        for name, f in r["client"]["phases"].items():
            if not name.startswith(("GetProfile", "Health")):
                continue
            window = f.get("processes", {})
            rows.append(
                [
                    f"{kind} {name}",
                    f["requests"],
                    f["p50_ms"],
                    f["p90_ms"],
                    f["p99_ms"],
                    f["p999_ms"],
                    f["max_ms"],
                    f["requests_per_s"],
                    _cpu_ms(window, "profiles", f["requests"]),
                    _cpu_ms(window, "client", f["requests"]),
                    _cores(window, "rest of machine"),
                ]
            )
    headers = ["GetProfile (gRPC)", "requests", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms"]
    headers += ["max ms", "req/s", "service CPU ms", "client CPU ms", "others (cores)"]
    out.append(table(headers, rows))
    for kind, r in dbs.items():
        seq = r["client"]["phases"].get("GetProfile sequential")
        if seq:
            out.append(
                f"{kind}: {seq['known']:,} known; answers {seq['answer_bytes_mean'] / 1024:.1f} "
                f"KiB on average (p99 {seq['answer_bytes_p99'] / 1024:.1f}), "
                f"{seq['purchased_mean']:.0f} purchased items (p99 {seq['purchased_p99']:.0f}); "
                f"p50 of the 1% largest answers {seq['largest_1pct_p50_ms']:.2f} ms, p99 of the "
                f"rest {seq['rest_p99_ms']:.2f} ms; machine idle before "
                f"{r['idle_before']:.0%}, load average during {seq['loadavg'][0]:.2f}"
            )
    for kind, r in dbs.items():
        steps = r["steps"]
        out.append(
            f"{kind}: in process, without gRPC (mean µs, p99 in brackets): "
            + ", ".join(
                f"{name} {f['mean_us']:,.0f} ({f['p99_us']:,.0f})"
                for name, f in steps.items()
                if name != "in all"
            )
            + f"; in all {steps['in all']['mean_us']:,.0f} µs"
        )
    out.append("")

    rows = []
    for kind, r in dbs.items():
        for name, f in r["client"]["phases"].items():
            if name.startswith(("GetProfile", "Health")) or name == "warm-up":
                continue
            window = f.get("processes", {})
            members = f.get("size", f.get("members", f.get("population")))
            rows.append(
                [
                    f"{kind} {name}",
                    members,
                    f["wall_s"],
                    f.get("first_page_s"),
                    f.get("members_per_s"),
                    _cores(window, "profiles"),
                    _rss(window, "profiles"),
                    _rss(window, "gateway") if "gateway" in name else "-",
                    (
                        f"{f['client_rss_before_mib']:.0f} -> {f['client_rss_peak_mib']:.0f}"
                        if "client_rss_peak_mib" in f
                        else "-"
                    ),
                ]
            )
    headers = ["call", "members", "seconds", "first page s", "members/s", "service cores"]
    headers += ["service RSS MiB", "gateway RSS MiB", "client RSS MiB"]
    out.append(table(headers, rows))
    for kind, r in dbs.items():
        out.append(f"segment  {kind}: {SEGMENT}: {r['condition']}")
    for kind, r in dbs.items():
        peaks = r["peak_rss_mib"]
        out.append(
            f"memory   {kind}: profiles service {r['service_rss_started_mib']:.0f} MiB once "
            f"serving, peak {peaks['profiles']:.0f} MiB; gateway peak {peaks['gateway']:.0f} MiB; "
            f"client peak {r['client']['client_peak_rss_mib']:.0f} MiB (VmHWM)"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profiles", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_MEMBERS:,} members, fewer requests"
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--source", type=Path, help="Online Retail CSV to fit from")
    parser.add_argument(
        "--sample", action="store_true", help="fit from the bundled sample even if the CSV is there"
    )
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--views-per-visit", type=float, default=2.0)
    parser.add_argument("--browse-per-order", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20_000, help="sequential GetProfile")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--concurrent-requests", type=int, default=20_000)
    parser.add_argument(
        "--steps", type=int, default=2000, help="members whose GetProfile steps are timed"
    )
    parser.add_argument("--segment-size", type=int, default=100_000)
    parser.add_argument("--latency-only", action="store_true", help="skip the segment calls")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=600.0,
        help="before measuring, wait at most this many seconds for the machine to be 85%% idle",
    )
    parser.add_argument("--timeout", type=float, default=8 * 3600.0, help="per step, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep-data", action="store_true", help="keep the stores afterwards")
    parser.add_argument(
        "--serve-only",
        type=Path,
        metavar="EARLIER_JSON",
        help="measure serving again on the stores an earlier run kept (--keep-data --json)",
    )
    args = parser.parse_args(argv)
    earlier: dict[str, Any] | None = None
    if args.serve_only:
        earlier = json.loads(args.serve_only.read_text())
        for name in ("members", "seed", "views_per_visit", "browse_per_order"):
            setattr(args, name, earlier[name])
    if args.quick:
        args.members = min(args.members, QUICK_MEMBERS)
        args.warmup, args.requests = min(args.warmup, 200), min(args.requests, 2000)
        args.concurrent_requests = min(args.concurrent_requests, 2000)
        args.steps = min(args.steps, 500)
    # A segment of a tenth of the members at most: --quick keeps the shape of the full run.
    args.segment_size = min(args.segment_size, max(1, args.members // 10))
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]

    began = time.perf_counter()
    loadavg = os.getloadavg()
    with work_dir("profiles", args.keep_data) as work:
        try:
            if earlier is not None:
                summary = earlier["shape"]
                kinds = [k for k in kinds if k in earlier["databases"]]
                databases = {
                    kind: measure(kind, None, work, args, earlier["databases"][kind])
                    for kind in kinds
                }
            else:
                source = args.source or (
                    DEFAULT_SOURCE if DEFAULT_SOURCE.is_file() and not args.sample else None
                )
                say(f"fitting the distributions of {source_name(source)}")
                catalog, events = read_source(source)
                shape = Shape.fit(source_name(source), catalog, events)
                summary = shape.summary()
                shape_path = work / "shape.json"
                shape.save(shape_path)
                del catalog, events, shape
                databases = {kind: measure(kind, shape_path, work, args, None) for kind in kinds}
        except (BenchFailed, subprocess.TimeoutExpired, OSError) as exc:
            print(f"bench: failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
    results = {
        "machine": machine(),
        "code": code_version(),
        "loadavg_before": loadavg,
        "stores": [r["store"] for r in databases.values()],
        "shape": summary,
        "members": args.members,
        "seed": args.seed,
        "views_per_visit": args.views_per_visit,
        "browse_per_order": args.browse_per_order,
        "serve_only": str(args.serve_only) if args.serve_only else None,
        "wall_s": time.perf_counter() - began,
        "databases": databases,
    }
    publish(results, report(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
