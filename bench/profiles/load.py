"""Load synthetic members into one profile store, as the profiles consumer would.

    python -m bench.profiles.load --url URL --shape SHAPE.json --members N --seed S --out OUT.json

A process of its own, so that its peak RSS is the load's alone. It saves the catalog
(`save_catalog`, what the consumer does with the catalog topic), then hands the store one
batch of records at a time (`apply_events`, the consumer's path: the events as `WireEvent`,
as they come off the bus), then recomputes the score boundaries (`recompute_scoring`).
It writes what it did and how long each part took to OUT as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.profiles import peak_rss_mib
from bench.profiles.synthetic import Members, Shape
from services.common.grpc_server import tune_gc
from services.profiles.settings import ProfilesSettings
from services.profiles.store import SqlProfileStore

# What BusWorker polls at once (services/common/consuming.py): a batch of the consumer.
RECORDS_PER_BATCH = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--shape", type=Path, required=True)
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--views-per-visit", type=float, default=2.0)
    parser.add_argument("--browse-per-order", type=float, default=1.0)
    parser.add_argument("--cohort", type=int, default=2000)
    parser.add_argument("--records-per-batch", type=int, default=RECORDS_PER_BATCH)
    parser.add_argument("--segment-size", type=int, required=True)
    parser.add_argument("--segment-recent-days", type=float, default=90.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    shape = Shape.load(args.shape)
    members = Members(
        shape,
        args.members,
        args.seed,
        views_per_visit=args.views_per_visit,
        browse_per_order=args.browse_per_order,
        cohort=args.cohort,
    )
    store = SqlProfileStore.from_url(args.url, ProfilesSettings(), os.urandom(32))
    tune_gc()  # as the service does once it has started
    started, cpu_started = time.perf_counter(), time.process_time()
    store.save_catalog(shape.catalog)
    applied = batches = 0
    apply_s = 0.0
    report_at = time.perf_counter() + 60
    # (members, events applied, seconds in the store) after each tenth of the members: the
    # rate of the last tenth against the first shows whether loading slows as the store grows.
    progress: list[tuple[int, int, float]] = []
    tenth = max(1, args.members // 10)
    for batch in members.batches(args.records_per_batch):
        t0 = time.perf_counter()
        applied += store.apply_events(batch)
        apply_s += time.perf_counter() - t0
        batches += 1
        if members.tally.members >= tenth * (len(progress) + 1):
            progress.append((members.tally.members, applied, apply_s))
        if time.perf_counter() >= report_at:
            report_at += 60
            done = members.tally.members / args.members
            elapsed = time.perf_counter() - started
            print(
                f"bench: load {done:6.1%} of members, {applied:,} events, "
                f"{applied / elapsed:,.0f} events/s, {elapsed:,.0f} s",
                file=sys.stderr,
                flush=True,
            )
    load_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    t0 = time.perf_counter()
    scoring = store.recompute_scoring(datetime.now(UTC))
    recompute_s = time.perf_counter() - t0
    store.close()
    tally = members.tally
    threshold = tally.spend_threshold(args.segment_size, args.segment_recent_days, time.time())
    result = {
        **tally.as_dict(),
        "applied": applied,
        "batches": batches,
        "load_s": load_s,
        "apply_s": apply_s,
        "cpu_s": cpu_s,
        "recompute_s": recompute_s,
        "scored_population": scoring.population,
        "peak_rss_mib": peak_rss_mib(),
        "progress": progress,
        "segment_spend": threshold,
        "segment_spend_any": tally.spend_threshold(args.segment_size, math.inf, time.time()),
    }
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
