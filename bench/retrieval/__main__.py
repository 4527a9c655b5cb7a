"""Benchmark retrieval at catalog scale: the item index in process, then GetCandidates over gRPC.

    python -m bench.retrieval [--items N] [--queries Q] [--k K] [--approximate hnsw|ivf]
                              [--grpc-items N] [--members M] [--requests R] [--concurrency C]
                              [--server-threads default,1] [--skip-index] [--skip-grpc]
                              [--json PATH] [--keep-data]

1. In process (bench/retrieval/inprocess.py): N synthetic items with ALS-like factors
   (bench/retrieval/synthetic.py), the index `services.retrieval.index.build_index`
   chooses for them; build time, memory, recall@100 against exact search over Q member
   queries, and search latency for k=K one query at a time: unfiltered, 100 items
   excluded, and category masks keeping ~10% and ~1% of the items.
2. Over gRPC: a synthetic shop of --grpc-items items (default N) is loaded into
   retrieval's SQLite store and trained by the public trainer, in a process of its own
   (bench/retrieval/shop.py); then the retrieval service starts on that data dir as the
   fleet starts it (`python -m services.retrieval`, RECOFLEET_DATA_DIR, RECOFLEET_BUS=local,
   RECOFLEET_RETRIEVAL_ADDR) and GetCandidates(limit=K) is timed for known members, one
   call at a time and from C concurrent callers; once per --server-threads setting
   (`default`: as the fleet runs it; `1`: OMP_NUM_THREADS=1).
3. Prints the figures and the machine; never judges them. Exits non-zero only when a
   step fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from bench.fleet import BenchFailed, code_version, free_port, machine, publish, say, table, work_dir
from bench.profiles import peak_rss_mib, rss_mib
from bench.profiles.processes import run_child, service_env, started, wait_serving
from bench.retrieval import client, inprocess
from bench.retrieval.shop import member_id
from services.retrieval.index import EXACT_BELOW, Approximate
from services.retrieval.server import SERVICE_NAME


@contextlib.contextmanager
def retrieval_service(
    data_dir: Path, threads: str, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The retrieval service on `data_dir`, once its health check says SERVING."""
    addr = f"127.0.0.1:{free_port()}"
    env = service_env(data_dir, RECOFLEET_RETRIEVAL_ADDR=addr)
    if threads != "default":
        env["OMP_NUM_THREADS"] = threads
    with started("retrieval", "services.retrieval", env, log) as process:
        wait_serving("retrieval", SERVICE_NAME, addr, process, log, timeout_s=600)
        yield addr, process


def serve_and_measure(
    data_dir: Path, threads: str, members: int, args: argparse.Namespace
) -> dict[str, Any]:
    ids = [member_id(n) for n in range(members)]
    log = data_dir.parent / f"retrieval-{threads}.log"
    began = time.perf_counter()
    with retrieval_service(data_dir, threads, log) as (addr, process):
        serving_s = time.perf_counter() - began
        rss_serving = rss_mib(process.pid)
        say(f"gRPC ({threads} threads): serving on {addr} after {serving_s:.1f}s; one caller")
        calls = client.workload(ids, args.requests + args.warmup, args.seed)
        one = client.sequential(addr, calls, args.k, args.warmup)
        say(f"gRPC ({threads} threads): {args.concurrency} concurrent callers")
        many = client.concurrent(
            addr,
            client.workload(ids, args.concurrent_requests, args.seed + 1),
            args.k,
            args.concurrency,
        )
        peak = peak_rss_mib(process.pid)
    return {
        "threads": threads,
        "serving_after_s": serving_s,
        "rss_serving_mib": rss_serving,
        "peak_rss_mib": peak,
        "sequential": one,
        "concurrent": many,
    }


def grpc_path(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    items = args.grpc_items or args.items
    members = args.members or max(2, int(items * 0.8))
    data_dir = work / "data"
    data_dir.mkdir(parents=True)
    say(f"gRPC: loading and training a shop of {items:,} items and {members:,} members")
    flags = ["--data-dir", str(data_dir), "--items", str(items), "--members", str(members)]
    shop = run_child("bench.retrieval.shop", [*flags, "--seed", str(args.seed)], args.timeout)
    say(f"gRPC: loaded in {shop['load_s']:.0f}s, trained in {shop['train_s']:.0f}s")
    runs = [
        serve_and_measure(data_dir, threads, members, args)
        for threads in args.server_threads.split(",")
    ]
    return {"shop": shop, "runs": runs}


# --- the report --------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        f"machine  {m['cpu_model']}, {m['cpus_usable']} cores usable of {m['cpus_listed']}, "
        f"{m['ram_gib']} GiB RAM, cgroup cpu.max {m['cgroup_cpu_max'] or '-'}",
        f"         {m['os']}, Linux {m['kernel']} {m['arch']}, {m['python']}",
        f"         load average before the run {results['loadavg_before']}",
        f"code     {results['code']}",
        f"run      {results['wall_s'] / 60:.1f} min in all",
        "",
    ]
    if results.get("index"):
        out += index_report(results["index"])
    if results.get("grpc"):
        out += grpc_report(results["grpc"], results["k"])
    return "\n".join(out)


def index_report(r: dict[str, Any]) -> list[str]:
    spec = r["spec"]
    params = ", ".join(
        f"{k}={v}" for k, v in spec.items() if k not in ("kind", "metric", "dim", "size") and v
    )
    rows = [
        [
            name,
            c["allowed_share"],
            c["recall@100"],
            c["min_recall@100"],
            c["short_answers"],
            c["p50_ms"],
            c["p90_ms"],
            c["p99_ms"],
            c["max_ms"],
        ]
        for name, c in r["cases"].items()
    ]
    first = next(iter(r["cases"].values()))
    headers = ["search", "share kept", "recall@100", "min", "short", "p50 ms", "p90 ms"]
    return [
        f"index    {r['items']:,} synthetic items x {r['dims']} dims in {r['categories']:,} "
        f"categories; {spec['kind']} ({params or 'exact'}), exact below {r['exact_below']:,}",
        f"         built in {r['build_s']:.1f}s on {r['build_threads']} threads; process RSS "
        f"+{r['rss_growth_mib']:.0f} MiB (the vectors alone {r['vectors_mib']:.0f} MiB), file "
        f"{r['file_mib']:.0f} MiB",
        f"         {first['queries']:,} member queries, k={first['k']}, one at a time on one "
        "thread; recall@100 against exact search with the same filter",
        "",
        table([*headers, "p99 ms", "max ms"], rows),
        "",
    ]


def grpc_report(r: dict[str, Any], k: int) -> list[str]:
    shop = r["shop"]
    steps = shop["train_steps"]
    marks = [f"{name} at {at:.0f}s" for name, at in steps]
    out = [
        f"shop     {shop['items']:,} items, {shop['members']:,} members, {shop['events']:,} "
        f"purchases, {shop['lines']:,} lines; model {shop['meta']}",
        f"         store loaded in {shop['load_s']:.0f}s ({shop['lines'] / shop['load_s']:,.0f} "
        f"lines/s, {shop['store_bytes'] / 2**20:,.0f} MiB); trained in {shop['train_s']:.0f}s "
        f"({'; '.join(marks)}); peak RSS {shop['peak_rss_mib']:.0f} MiB",
        "",
    ]
    rows = []
    for run in r["runs"]:
        for name in ("sequential", "concurrent"):
            f = run[name]
            rows.append(
                [
                    f"{run['threads']} threads, {name}",
                    f["requests"],
                    f["errors"],
                    f["short_answers"],
                    f["p50_ms"],
                    f["p90_ms"],
                    f["p99_ms"],
                    f["max_ms"],
                    f["requests_per_s"],
                ]
            )
    headers = [f"GetCandidates(limit={k})", "requests", "errors", f"< {k}", "p50 ms", "p90 ms"]
    out.append(table([*headers, "p99 ms", "max ms", "req/s"], rows))
    for run in r["runs"]:
        out.append(
            f"server   {run['threads']} threads: serving {run['serving_after_s']:.1f}s after "
            f"start, RSS {run['rss_serving_mib']:.0f} MiB then, peak {run['peak_rss_mib']:.0f} MiB"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retrieval", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--items", type=int, default=250_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--approximate", choices=["hnsw", "ivf"], default="hnsw")
    parser.add_argument("--exact-below", type=int, default=EXACT_BELOW)
    parser.add_argument("--grpc-items", type=int, help="catalog of the gRPC shop (default --items)")
    parser.add_argument(
        "--members", type=int, help="members of the gRPC shop (default 0.8 x items)"
    )
    parser.add_argument("--requests", type=int, default=2000, help="sequential GetCandidates")
    parser.add_argument("--concurrent-requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--server-threads", default="default,1", help="OpenMP threads, per run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-grpc", action="store_true")
    parser.add_argument("--timeout", type=float, default=3 * 3600.0, help="per step, seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    loadavg = os.getloadavg()
    with work_dir("retrieval", args.keep_data) as work:
        results: dict[str, Any] = {"k": args.k}
        try:
            if not args.skip_index:
                approximate = cast(Approximate, args.approximate)
                results["index"] = inprocess.measure(
                    args.items, args.queries, args.k, approximate, args.exact_below, args.seed
                )
            if not args.skip_grpc:
                results["grpc"] = grpc_path(work, args)
        except (BenchFailed, subprocess.TimeoutExpired, OSError) as exc:
            print(f"bench: failed: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("bench: interrupted", file=sys.stderr)
            return 130
    results |= {
        "machine": machine(),
        "code": code_version(),
        "loadavg_before": loadavg,
        "wall_s": time.perf_counter() - began,
    }
    publish(results, report(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
