"""CPU per event of each step of the ingest path, in one process, without HTTP or gRPC.

    python -m bench.stages [--bus local|kafka] [--events N] [--batch B] [--source CSV]
                           [--shuffle] [--profile STAGE]

`bench.ingest` says how fast the whole fleet goes; this says where its CPU goes. It runs
the same code the services run, one step after the other on the same events, and reads
the process CPU time around each:

* ingestion: `Ingestor.publish_events` on native batches of B events, onto the bus (a local
  log in a temporary directory, or librdkafka's mock cluster on loopback, as in bench.ingest);
* profiles: poll the log, decode, `SqlProfileStore.apply_events` (SQLite), commit;
* retrieval: poll the log, decode, `SqlInteractionStore.apply_events` (SQLite), commit.

The events are the ones `bench.ingest` posts (one purchase per Online Retail line, for
members new to the store). `--profile STAGE` runs that step under cProfile and prints the
top functions. Figures vary with the machine; the bench prints, it never judges.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.fleet import machine, say
from bench.ingest import DEFAULT_SOURCE, Lines, batches
from services.common.bus import EVENTS_TOPIC, EventBus, open_bus
from services.common.bus.kafka import KafkaSettings
from services.common.consuming import BusWorker
from services.common.grpc_server import tune_gc
from services.common.pii import PiiScrubber
from services.common.settings import FleetSettings
from services.ingestion.domain import Ingestor
from services.ingestion.settings import IngestionSettings
from services.profiles.server import profile_worker
from services.profiles.settings import ProfilesSettings
from services.profiles.store import SqlProfileStore
from services.retrieval.server import interaction_worker
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore
from tests.kafka_mock import kafka_cluster


def timed(name: str, run: Callable[[], Any], events: int, profile: str | None) -> float:
    profiler = cProfile.Profile() if profile == name else None
    started_cpu, started = time.process_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    run()
    if profiler:
        profiler.disable()
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    say(f"{name:<10} {cpu * 1e6 / events:7.1f} µs CPU/event  ({cpu:.2f} s CPU, {wall:.2f} s wall)")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return cpu


def ingest(bus: EventBus, bodies: list[bytes]) -> Callable[[], None]:
    ingestor = Ingestor(bus, PiiScrubber(b"bench-secret-0123456789"), IngestionSettings())

    def run() -> None:
        for body in bodies:
            outcome = ingestor.publish_events(body)
            assert not outcome.rejected, outcome.rejected[:3]

    return run


def consume(worker: BusWorker, bus: EventBus, group: str) -> Callable[[], None]:
    def run() -> None:
        records = worker.drain()
        left = bus.lag(group, EVENTS_TOPIC)
        assert left == 0, f"{group}: {left} records left after applying {records}"

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bus", choices=["local", "kafka"], default="local")
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--shuffle", action="store_true", help="mix members in every batch")
    parser.add_argument("--profile", choices=["ingestion", "profiles", "retrieval"])
    args = parser.parse_args()

    lines = Lines.read(args.source, args.events, args.shuffle)
    bodies = batches(lines.events("stage", args.events), args.batch)
    say(str(machine()))
    with contextlib.ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recofleet-")))
        fleet = FleetSettings(data_dir=data_dir, bus=args.bus)
        kafka = None
        if args.bus == "kafka":
            kafka = KafkaSettings(bootstrap_servers=stack.enter_context(kafka_cluster()))
        bus = open_bus(fleet, kafka)
        profiles = SqlProfileStore.from_url(f"sqlite:///{data_dir / 'p.db'}", ProfilesSettings())
        retrieval_settings = RetrievalSettings()
        interactions = SqlInteractionStore.from_url(
            f"sqlite:///{data_dir / 'r.db'}", retrieval_settings.event_weights
        )
        tune_gc()  # as every service does once it has started
        total = timed("ingestion", ingest(bus, bodies), args.events, args.profile)
        say(f"{sum(bus.end_offsets(EVENTS_TOPIC).values()):,} records on {EVENTS_TOPIC}")
        worker = profile_worker(bus, profiles, ProfilesSettings())
        run = consume(worker, bus, ProfilesSettings().consumer_group)
        total += timed("profiles", run, args.events, args.profile)
        worker = interaction_worker(bus, interactions, retrieval_settings)
        run = consume(worker, bus, retrieval_settings.consumer_group)
        total += timed("retrieval", run, args.events, args.profile)
        say(f"{'in all':<10} {total * 1e6 / args.events:7.1f} µs CPU/event, {bus.location()}")
        profiles.close()
        interactions.close()
        bus.close()


if __name__ == "__main__":
    main()
