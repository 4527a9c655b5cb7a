"""Benchmark retrieval training on the full Online Retail file: time per phase and memory.

    python -m bench.train [--source CSV] [--factors 64] [--iterations I] [--tracemalloc]
                          [--json PATH] [--keep-data]

1. Reads the CSV into native events (services.datasets.online_retail: one purchase per
   invoice, its lines as items) and loads them into a temporary SQLite interaction store
   (`SqlInteractionStore.apply_events` in the consumer's batches, and the catalog), timed.
2. Trains once in a process of its own (bench/train/fit.py) with the public
   `train(store, models, settings, force=True)`: the time of each phase (store load,
   matrix build, ALS fit, index build, write, and the calibration around its own model),
   the process's RSS (sampled; VmHWM and getrusage's ru_maxrss at the end) and, with
   --tracemalloc, the Python heap's peak (slower: every allocation is traced).
3. Prints the figures and the machine; never judges them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.fleet import BenchFailed, code_version, machine, publish, say, table, work_dir
from bench.profiles import peak_rss_mib
from bench.profiles.processes import run_child
from services.datasets.online_retail import to_catalog_and_events
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv"
EVENTS_PER_BATCH = 2000


def load(source: Path, url: str) -> dict[str, Any]:
    say(f"reading {source}")
    began = time.perf_counter()
    catalog, events = to_catalog_and_events(source)
    read_s = time.perf_counter() - began
    say(f"loading {len(events):,} purchases into {url}")
    store = SqlInteractionStore.from_url(url, RetrievalSettings().event_weights)
    began = time.perf_counter()
    store.save_catalog(catalog)
    applied = 0
    for start in range(0, len(events), EVENTS_PER_BATCH):
        applied += store.apply_events(events[start : start + EVENTS_PER_BATCH])
    load_s = time.perf_counter() - began
    store.close()
    return {
        "read_s": read_s,
        "load_s": load_s,
        "events": len(events),
        "lines": sum(len(e.items) for e in events),
        "interactions": applied,
        "catalog": len(catalog),
        "peak_rss_mib": peak_rss_mib(),
    }


def report(results: dict[str, Any]) -> str:
    m, data, fit = results["machine"], results["data"], results["fit"]
    meta = fit["meta"]
    out = [
        f"machine  {m['cpu_model']}, {m['cpus_usable']} cores usable of {m['cpus_listed']}, "
        f"{m['ram_gib']} GiB RAM, cgroup cpu.max {m['cgroup_cpu_max'] or '-'}",
        f"         {m['os']}, Linux {m['kernel']} {m['arch']}, {m['python']}",
        f"         load average before the run {results['loadavg_before']}",
        f"code     {results['code']}",
        f"data     {results['source']}: {data['events']:,} purchases, {data['lines']:,} lines, "
        f"{data['catalog']:,} catalog items; read in {data['read_s']:.1f}s, into SQLite in "
        f"{data['load_s']:.1f}s ({data['lines'] / data['load_s']:,.0f} lines/s)",
        f"model    {meta['members']:,} members x {meta['items']:,} items, "
        f"{meta['interactions']:,} interaction lines, {fit['settings']['factors']} factors, "
        f"{fit['settings']['iterations']} iterations, index {meta['index']}; "
        f"{fit['model_mib']:.1f} MiB on disk",
        "",
    ]
    rows = []
    for name, phase in fit["phases"].items():
        if phase is None:
            rows.append([name, "not measured", None, None])
            continue
        rows.append([name, phase["calls"], phase["seconds"], phase["peak_rss_mib"]])
    out.append(table(["phase", "calls", "seconds", "peak RSS MiB"], rows))
    out.append(
        "         (calibration builds a held-out model of its own: its ALS fit and index "
        "builds are in their rows too)"
    )
    steps = "; ".join(f"{name} at {at:.1f}s" for name, at in fit["steps"])
    out += [
        "",
        f"train    {fit['train_s']:.1f}s in all ({steps})",
        f"memory   RSS {fit['rss_before_mib']:.0f} MiB before training, peak "
        f"{fit['peak_rss_mib']:.0f} MiB (VmHWM; ru_maxrss {fit['ru_maxrss_mib']:.0f} MiB)"
        + (
            f"; Python heap peak {fit['tracemalloc_peak_mib']:.0f} MiB (tracemalloc)"
            if fit["tracemalloc_peak_mib"] is not None
            else ""
        ),
        f"metrics  {meta.get('metrics')}",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--iterations", type=int, help="ALS iterations (default: the setting's)")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace the Python heap")
    parser.add_argument("--timeout", type=float, default=3 * 3600.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args(argv)
    if not args.source.is_file():
        print(f"bench: no Online Retail CSV at {args.source} (--source)", file=sys.stderr)
        return 1

    loadavg = os.getloadavg()
    with work_dir("train", args.keep_data) as work:
        url = f"sqlite:///{work / 'retrieval.db'}"
        try:
            data = load(args.source, url)
            say("training in a process of its own")
            flags = ["--url", url, "--models", str(work / "models"), "--factors", str(args.factors)]
            if args.iterations:
                flags += ["--iterations", str(args.iterations)]
            if args.tracemalloc:
                flags.append("--tracemalloc")
            fit = run_child("bench.train.fit", flags, args.timeout)
        except (BenchFailed, subprocess.TimeoutExpired, OSError) as exc:
            print(f"bench: failed: {exc}", file=sys.stderr)
            return 1
    results = {
        "machine": machine(),
        "code": code_version(),
        "loadavg_before": loadavg,
        "source": str(args.source),
        "data": data,
        "fit": fit,
    }
    publish(results, report(results), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
