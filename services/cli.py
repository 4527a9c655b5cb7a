"""`recofleet`: load data, train, run the fleet.

recofleet load-sample   publish the bundled sample (or RECOFLEET_SAMPLE_SOURCE) on the bus
recofleet train         catch retrieval up with the bus, train ALS + FAISS, publish a version
recofleet run           start every service and the gateway, until Ctrl-C
recofleet up            all three, in order (what `make run` does)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from services.common import dead_letters
from services.common.bus import BusError, open_bus
from services.common.grpc_server import configure_logging
from services.common.settings import FleetSettings
from services.ingestion.domain import open_ingestor
from services.ingestion.settings import IngestionSettings
from services.loading import example_member, load
from services.retrieval.server import interaction_worker, open_models, open_store
from services.retrieval.settings import RetrievalSettings
from services.retrieval.training import NotEnoughData, train
from services.runner import Fleet, FleetFailed, StopRequested

log = logging.getLogger("recofleet")


def cmd_load_sample(fleet: FleetSettings, source: Path | None) -> None:
    bus = open_bus(fleet)
    try:
        ingestor = open_ingestor(fleet, bus, IngestionSettings())
        loaded = load(ingestor, bus.location(), fleet.data_dir, source or fleet.sample_source)
    finally:
        bus.close()
    verb = "already loaded" if loaded.skipped else "loaded"
    print(f"{verb}: {loaded.events} events, {loaded.items} items from {loaded.source}")
    if loaded.rejected:
        print(f"rejected {loaded.rejected} entries of the source, for example:")
        for reason in loaded.reasons:
            print(f"  {reason}")


def cmd_train(fleet: FleetSettings, force: bool, catch_up: bool | None) -> None:
    """Train retrieval; first apply what the bus holds that the store lacks, when safe.

    Catching up joins the retrieval service's consumer group. On the local log a running
    service holds the group and the attempt is refused; on Kafka it would silently take
    partitions from the running service, so there it happens only when asked for.
    """
    settings = RetrievalSettings()
    bus = open_bus(fleet)
    store = open_store(fleet, settings)
    try:
        if catch_up is None:
            catch_up = fleet.bus == "local"
        try:
            if catch_up:
                caught_up = interaction_worker(bus, store, settings).drain()
                print(f"retrieval store caught up with the bus: {caught_up} new records")
        except BusError as exc:
            # The retrieval service is running and keeps the store current itself.
            print(f"training on the store as it is ({exc})")
        outcome = train(store, open_models(fleet, settings), settings, force=force)
    finally:
        store.close()
        bus.close()
    meta = outcome.meta
    if outcome.trained:
        print(
            f"trained model {outcome.version} in {outcome.seconds:.1f}s: {meta['members']} "
            f"members, {meta['items']} items, {meta['interactions']} interactions"
        )
    else:
        print(f"model {outcome.version} is current for this data; not retrained (--force to)")


def cmd_dead_letters(fleet: FleetSettings, action: str, dry_run: bool) -> None:
    bus = open_bus(fleet)
    try:
        if action == "list":
            count = 0
            for letter in dead_letters.read(bus):
                count += 1
                print(
                    f"{letter.partition}:{letter.offset}  group={letter.group}  "
                    f"from={letter.topic}  key={letter.key}\n  reason: {letter.reason}\n"
                    f"  record: {letter.preview()}"
                )
            print(f"{count} dead letters")
        else:
            replayed = dead_letters.replay(bus, dry_run=dry_run)
            verb = "would replay" if dry_run else "replayed"
            print(f"{verb} {len(replayed)} dead letters to their original topics")
    finally:
        bus.close()


def cmd_run(fleet: FleetSettings) -> int:
    runner = Fleet(fleet)
    runner.handle_signals()
    print("starting the fleet (logs in", fleet.data_dir / "logs", ") ...", flush=True)
    try:
        runner.start()
    except FleetFailed as exc:
        print(f"the fleet did not start: {exc}", file=sys.stderr)
        return 1
    except StopRequested:
        print("stopped before the fleet was ready", flush=True)
        return 0
    _print_welcome(runner, example_member(fleet.data_dir))
    return runner.watch()


def _print_welcome(runner: Fleet, member: str | None) -> None:
    url = runner.gateway_url
    member = member or "17850"
    event = {"type": "view", "member_id": member, "item_id": "85123A"}
    print(
        f"""
recofleet is serving on {url}  (API docs: {url}/docs)

  curl '{url}/v1/members/{member}/recommendations?limit=10'
  curl '{url}/v1/members/{member}/profile'
  curl -X POST {url}/v1/events -H 'content-type: application/json' \\
       -d '{json.dumps(event)}'

Ctrl-C stops every process.""",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recofleet", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("load-sample", help="publish sample data on the bus")
    sample.add_argument("--source", type=Path, help="Online Retail CSV (default: bundled sample)")
    trainer = commands.add_parser("train", help="train and publish a retrieval model")
    trainer.add_argument("--force", action="store_true", help="retrain even if data is unchanged")
    trainer.add_argument(
        "--catch-up",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply pending bus records to the retrieval store first (default: on the local "
        "bus only; on Kafka only while the retrieval service is stopped)",
    )
    commands.add_parser("run", help="start the fleet until Ctrl-C")
    letters = commands.add_parser("dead-letters", help="list or replay records consumers refused")
    letters.add_argument("action", choices=["list", "replay"])
    letters.add_argument("--dry-run", action="store_true", help="replay: only say what would go")
    up = commands.add_parser("up", help="load-sample, train, run")
    up.add_argument("--source", type=Path, help="Online Retail CSV (default: bundled sample)")
    args = parser.parse_args(argv)

    fleet = FleetSettings()
    configure_logging("WARNING" if args.command in ("run", "up") else fleet.log_level)
    try:
        if args.command in ("load-sample", "up"):
            cmd_load_sample(fleet, args.source)
        if args.command == "train":
            cmd_train(fleet, args.force, args.catch_up)
        if args.command == "up":
            # The fleet is not running yet: the trainer may take the retrieval group's place.
            cmd_train(fleet, force=False, catch_up=True)
        if args.command == "dead-letters":
            cmd_dead_letters(fleet, args.action, args.dry_run)
        if args.command in ("run", "up"):
            return cmd_run(fleet)
    except (BusError, FileNotFoundError, NotEnoughData) as exc:
        print(f"recofleet {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
