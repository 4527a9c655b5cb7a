"""`recofleet`: load data, train, run the fleet.

recofleet load-sample   publish the bundled sample (or RECOFLEET_SAMPLE_SOURCE) on the bus
recofleet train         catch retrieval up with the bus, train ALS + FAISS, publish a version
recofleet run           start every service and the gateway, until Ctrl-C
recofleet up            all three, in order (what `make run` does)
recofleet keys          create, list and revoke the gateway's access keys
recofleet segments      discover segments: members clustered on their portraits
recofleet evaluate      score the fleet's candidates and baselines offline (docs/evaluation.md)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from sqlalchemy.exc import SQLAlchemyError

from services.campaigns import cli as campaigns_cli
from services.common import dead_letters
from services.common.bus import BusError, open_bus
from services.common.migrations import OutdatedSchema
from services.common.settings import FleetSettings
from services.common.telemetry import configure_logging
from services.evaluation import cli as evaluation_cli
from services.evaluation import simulate as simulation
from services.evaluation.bus_data import bus_events
from services.gateway.access_keys import (
    ENV_KEY_ID,
    SCOPE_MEANINGS,
    SCOPES,
    AccessKey,
    AccessKeyError,
    Seeded,
    create_key,
    describe,
    open_key_store,
    revoke_key,
    seed_admin_key,
)
from services.gateway.settings import GatewaySettings
from services.ingestion.domain import open_ingestor
from services.ingestion.settings import IngestionSettings
from services.loading import example_member, load
from services.profiles import discovery
from services.profiles.portrait import Portraitist
from services.profiles.settings import ProfilesSettings
from services.profiles.store import SqlProfileStore
from services.ranking.settings import RankingSettings
from services.retrieval.server import interaction_worker, open_models, open_store
from services.retrieval.settings import RetrievalSettings
from services.retrieval.training import NotEnoughData, train
from services.runner import Fleet, FleetFailed, StopRequested

log = logging.getLogger("recofleet")


def cmd_load_sample(fleet: FleetSettings, source: Path | None, redate: bool | None = None) -> None:
    bus = open_bus(fleet)
    redate_to = fleet.clock().now() if (fleet.redate if redate is None else redate) else None
    try:
        ingestor = open_ingestor(fleet, bus, IngestionSettings())
        loaded = load(
            ingestor,
            bus.location(),
            fleet.data_dir,
            source or fleet.sample_source,
            redate_to=redate_to,
        )
    finally:
        bus.close()
    verb = "already loaded" if loaded.skipped else "loaded"
    print(f"{verb}: {loaded.events} events, {loaded.items} items from {loaded.source}")
    if loaded.shifted_days:
        when = "when loaded" if loaded.skipped else "so that the newest event is from the last day"
        print(f"re-dated by {loaded.shifted_days} days {when}")
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
        started = time.perf_counter()

        def step(what: str) -> None:
            print(f"  {time.perf_counter() - started:6.1f}s  {what}", flush=True)

        outcome = train(store, open_models(fleet, settings), settings, force=force, progress=step)
    finally:
        store.close()
        bus.close()
    meta = outcome.meta
    if outcome.trained:
        print(
            f"trained model {outcome.version} in {outcome.seconds:.1f}s: {meta['members']} "
            f"members, {meta['items']} items, {meta['interactions']} interactions"
        )
        held = meta.get("metrics", {}).get("holdout", {})
        if isinstance(held, dict) and "ndcg@10" in held:
            print(
                f"on {held['members']} members' held-out lines: NDCG@10 {held['ndcg@10']}, "
                f"recall@10 {held['recall@10']} (docs/retrieval.md)"
            )
    else:
        print(f"model {outcome.version} is current for this data; not retrained (--force to)")


def cmd_train_ranker(fleet: FleetSettings) -> int:
    """Train the learned ranker on every event the bus keeps; publish it as a version."""
    # Imported here: LightGBM takes over a second to import, which the other commands
    # need not pay.
    from services.ranking.ltr import NotEnoughData as TooFewGroups
    from services.ranking.training import train_ranker

    bus = open_bus(fleet)
    try:
        events = bus_events(bus)
    finally:
        bus.close()
    print(f"read {len(events):,} events from the bus")
    try:
        trained = train_ranker(fleet, RankingSettings(), events)
    except TooFewGroups as exc:
        print(f"recofleet train-ranker: {exc}", file=sys.stderr)
        return 1
    meta = trained.meta
    scored = meta["metrics"][next(k for k in meta["metrics"] if k.startswith("validation_ndcg"))]
    source = meta["trained_from"]
    why = (
        "logged impressions and their outcomes"
        if source == "impressions"
        else "interactions with sampled negatives: no impressions with outcomes logged yet"
    )
    print(f"trained ltr {trained.version} in {trained.seconds:.1f}s from {why}")
    print(
        f"validation NDCG@10 (the newest fifth of the groups): ltr {scored['ltr']}, "
        f"{meta['metrics']['baseline']} order {scored['baseline']} (gain {scored['gain']:+})"
    )
    print(
        "not served yet: activate it with POST /v1/models/ltr/activate, or name it in an "
        "experiment's variant (docs/models.md)"
    )
    return 0


def cmd_simulate(fleet: FleetSettings, args: argparse.Namespace) -> int:
    """Simulated members against a running fleet's experiment (docs/models.md)."""
    seeded = GatewaySettings().admin_key
    key = (
        args.key or os.environ.get("RECOFLEET_KEY") or (seeded.get_secret_value() if seeded else "")
    )
    if not key:
        print("recofleet simulate: give an admin key (--key or RECOFLEET_KEY)", file=sys.stderr)
        return 2
    url = args.url or f"http://{fleet.gateway_host}:{fleet.gateway_port}"
    headers = {"Authorization": f"Bearer {key}"}
    # One line per request would bury the summary.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with httpx.Client(base_url=url, headers=headers, timeout=30.0) as http:
        found = http.get(f"/v1/experiments/{args.experiment}")
        if found.status_code != 200:
            print(f"recofleet simulate: {found.status_code} {found.text}", file=sys.stderr)
            return 1
        experiment = found.json()
        if experiment["status"] != "running":
            print(
                f"recofleet simulate: the experiment is {experiment['status']}: start it first",
                file=sys.stderr,
            )
            return 1
        bus = open_bus(fleet)
        try:
            known = [e.member_id for e in bus_events(bus)]
        finally:
            bus.close()
        members = simulation.members_of(known, args.members, args.seed)
        behaviour = simulation.Behaviour(
            ctr=args.ctr,
            lift=args.lift,
            favoured=args.favoured,
            buy_rate=args.buy_rate,
            visits=args.visits,
        )
        done = simulation.simulate(http, experiment["placement"], members, behaviour, args.seed)
        print(json.dumps(done.summary(behaviour), indent=2))
        if args.report:
            report = simulation.wait_for_report(http, args.experiment, done, args.confidence)
            for line in simulation.reading(report, behaviour):
                print(line)
    return 0


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


def cmd_keys(
    fleet: FleetSettings, action: str, scopes: Sequence[str], name: str, key_id: str
) -> int:
    """Access keys, through the store the gateway reads: they work while the fleet runs."""
    store = open_key_store(fleet, GatewaySettings())
    try:
        if action == "create":
            record, key = create_key(store, scopes, name)
            # Everything but the key goes to stderr: `KEY=$(recofleet keys create ...)` works.
            print(
                f"created access key {record.id} ({', '.join(record.scope_list)}"
                f"{'; ' + record.name if record.name else ''}); it is shown this once, only its "
                "hash is kept. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>':",
                file=sys.stderr,
                flush=True,
            )
            print(key, flush=True)
        elif action == "list":
            keys = store.all()
            rows = describe(keys)
            print(_columns(["id", "name", "scopes", "created", "revoked"], rows))
            print(f"{len(keys)} keys, {sum(k.active for k in keys)} active")
        else:
            return _revoke(revoke_key(store, key_id), key_id)
    finally:
        store.close()
    return 0


def _revoke(key: AccessKey | None, key_id: str) -> int:
    if key is None:
        print(
            f"recofleet keys revoke: no access key '{key_id}' (see recofleet keys list)",
            file=sys.stderr,
        )
        return 1
    print(
        f"access key {key.id} ({key.name or 'no name'}) is revoked since "
        f"{describe([key])[0][4]}: gateways refuse it within a second"
    )
    if key.id == ENV_KEY_ID:
        print("RECOFLEET_ADMIN_KEY stays revoked: set a new value and restart to have one again")
    return 0


def _columns(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def cmd_segments_discover(fleet: FleetSettings, k: int, top_categories: int, as_json: bool) -> int:
    """Cluster the profiles store's members (read only): each cluster a ready segment."""
    settings = ProfilesSettings()
    if settings.database_url is None and not (fleet.data_dir / "profiles.db").is_file():
        print(
            f"recofleet segments: no profiles store in {fleet.data_dir}: load data and let the "
            "fleet's profiles service read it first (recofleet up)",
            file=sys.stderr,
        )
        return 1
    try:
        store = SqlProfileStore.from_url(
            settings.database_url or fleet.sqlite_url("profiles"), settings
        )
        try:
            now, portraitist = fleet.clock().now(), Portraitist(settings)
            scoring = store.scoring()
            found = discovery.discover(
                (portraitist.draw(p, scoring, now) for p in store.iter_profiles()),
                k,
                top_categories,
            )
        finally:
            store.close()
    except (discovery.NotEnoughMembers, OutdatedSchema) as exc:
        print(f"recofleet segments: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"recofleet segments: the profiles store failed: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(found.definitions(), indent=2, ensure_ascii=False))
    else:
        print(discovery.report(found))
    return 0


def _seed_keys(fleet: FleetSettings) -> Seeded:
    """RECOFLEET_ADMIN_KEY into the store, or a first admin key on a new install."""
    gateway = GatewaySettings()
    store = open_key_store(fleet, gateway)
    try:
        admin_key = gateway.admin_key.get_secret_value() if gateway.admin_key else None
        seeded = seed_admin_key(store, admin_key)
    finally:
        store.close()
    if seeded.note:
        print(seeded.note, file=sys.stderr)
    return seeded


def cmd_run(fleet: FleetSettings) -> int:
    seeded = _seed_keys(fleet)
    runner = Fleet(fleet)
    runner.handle_signals()
    print("starting the fleet (logs in", fleet.data_dir / "logs", ") ...", flush=True)
    try:
        runner.start()
    except FleetFailed as exc:
        print(f"the fleet did not start: {exc}", file=sys.stderr)
        _print_unseen_key(seeded)
        return 1
    except StopRequested:
        print("stopped before the fleet was ready", flush=True)
        _print_unseen_key(seeded)
        return 0
    _print_welcome(runner, example_member(fleet.data_dir), seeded)
    return runner.watch()


def _print_unseen_key(seeded: Seeded) -> None:
    # The key made for this install is in the store already: it must not go unseen.
    if seeded.new_key:
        print(f"\n{NEW_KEY}\n  export RECOFLEET_KEY={seeded.new_key}", flush=True)


NEW_KEY = "The admin access key of this install, shown this once (only its hash is kept):"


def _print_welcome(runner: Fleet, member: str | None, seeded: Seeded) -> None:
    url = runner.gateway_url
    member = member or "17850"
    event = {"type": "view", "member_id": member, "item_id": "85123A"}
    if seeded.new_key:
        key = f"{NEW_KEY}\n\n  export RECOFLEET_KEY={seeded.new_key}"
        variable = "$RECOFLEET_KEY"
    elif seeded.key is not None and seeded.key.active:
        key = "Requests carry an access key; RECOFLEET_ADMIN_KEY is one:"
        variable = "$RECOFLEET_ADMIN_KEY"
    else:
        key = (
            "Requests carry an access key (RECOFLEET_KEY here): the admin key shown at the "
            "first start,\nor a new one from `recofleet keys create --scope admin`:"
        )
        variable = "$RECOFLEET_KEY"
    auth = f'-H "Authorization: Bearer {variable}"'
    print(
        f"""
recofleet is serving on {url}  (API docs: {url}/docs)

{key}

  curl {auth} '{url}/v1/members/{member}/recommendations?limit=10'
  curl {auth} '{url}/v1/members/{member}/profile'
  curl -X POST {url}/v1/events {auth} -H 'content-type: application/json' \\
       -d '{json.dumps(event)}'

Keys with narrower scopes: recofleet keys create --scope events:write --name shop-frontend
Ctrl-C stops every process.""",
        flush=True,
    )


def _simulate_parser(commands: Any) -> None:
    sim = commands.add_parser(
        "simulate",
        help="members who click and buy with a known preference for one variant, against a "
        "running experiment",
    )
    sim.add_argument("--experiment", required=True, help="the running experiment's id")
    sim.add_argument("--members", type=int, default=400, help="drawn from the bus's members")
    sim.add_argument("--visits", type=int, default=5, help="recommendations asked per member")
    sim.add_argument("--ctr", type=float, default=0.1, help="chance a visit clicks an item")
    sim.add_argument(
        "--lift", type=float, default=0.5, help="the favoured variant's extra, relative"
    )
    sim.add_argument("--favoured", default="treatment", help="the variant members prefer")
    sim.add_argument(
        "--buy-rate", type=float, default=0.3, help="chance a click ends in a purchase"
    )
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--url", help="the gateway (default: the fleet's)")
    sim.add_argument("--key", help="an admin key (default: $RECOFLEET_KEY)")
    sim.add_argument("--report", action="store_true", help="then wait for the report and read it")
    sim.add_argument("--confidence", type=float, default=0.95, help="of the report's intervals")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recofleet", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("load-sample", help="publish sample data on the bus")
    sample.add_argument("--source", type=Path, help="Online Retail CSV (default: bundled sample)")
    sample.add_argument(
        "--redate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="move the events by whole days so that the newest is from the last day "
        "(default: RECOFLEET_REDATE, on)",
    )
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
    commands.add_parser(
        "train-ranker", help="train the learned ranker (ltr) on the bus's events, as a version"
    )
    _simulate_parser(commands)
    up = commands.add_parser("up", help="load-sample, train, run")
    up.add_argument("--source", type=Path, help="Online Retail CSV (default: bundled sample)")
    _keys_parser(commands)
    _segments_parser(commands)
    evaluation_cli.add_parser(commands)
    campaigns_cli.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command in evaluation_cli.COMMANDS:
        return evaluation_cli.run(args)
    if args.command == campaigns_cli.COMMAND:
        return campaigns_cli.run(args)

    fleet = FleetSettings()
    configure_logging("WARNING" if args.command in ("run", "up") else fleet.log_level)
    try:
        if args.command == "up":
            GatewaySettings()  # a bad RECOFLEET_ADMIN_KEY is refused before loading and training
        if args.command in ("load-sample", "up"):
            cmd_load_sample(fleet, args.source, getattr(args, "redate", None))
        if args.command == "train":
            cmd_train(fleet, args.force, args.catch_up)
        if args.command == "train-ranker":
            return cmd_train_ranker(fleet)
        if args.command == "simulate":
            return cmd_simulate(fleet, args)
        if args.command == "up":
            # The fleet is not running yet: the trainer may take the retrieval group's place.
            cmd_train(fleet, force=False, catch_up=True)
        if args.command == "dead-letters":
            cmd_dead_letters(fleet, args.action, args.dry_run)
        if args.command == "keys":
            return cmd_keys(
                fleet,
                args.keys_command,
                getattr(args, "scope", None) or [],
                getattr(args, "name", ""),
                getattr(args, "key_id", ""),
            )
        if args.command == "segments":
            return cmd_segments_discover(fleet, args.k, args.top_categories, args.json)
        if args.command in ("run", "up"):
            return cmd_run(fleet)
    except (BusError, FileNotFoundError, NotEnoughData, AccessKeyError) as exc:
        print(f"recofleet {args.command}: {exc}", file=sys.stderr)
        return 1
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        print(f"recofleet {args.command}: invalid settings: {problems}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"recofleet {args.command}: the access key store failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _problem(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _keys_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser(
        "keys",
        help="create, list or revoke the gateway's access keys",
        description="Access keys of the gateway (see docs/access-keys.md). Scopes: "
        + "; ".join(f"{scope}: {meaning}" for scope, meaning in SCOPE_MEANINGS.items()),
    )
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="make a key; prints it alone on the last line")
    create.add_argument(
        "--scope", action="append", required=True, choices=SCOPES, help="repeat for several"
    )
    create.add_argument("--name", default="", help="what the key is for (shown by list)")
    actions.add_parser("list", help="every key: id, name, scopes, created, revoked")
    revoke = actions.add_parser("revoke", help="refuse a key from now on (within a second)")
    revoke.add_argument("key_id", help="the key's id (recofleet keys list)")


def _segments_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    segments = commands.add_parser(
        "segments",
        help="discover segments among the members",
        description="Segments found in the profiles store (see docs/segment-discovery.md).",
    )
    actions = segments.add_subparsers(dest="segments_command", required=True)
    found = actions.add_parser(
        "discover",
        help="k-means over member portraits: each cluster described, with a condition",
        description="Cluster the members who ordered on their RFM scores and top category "
        "affinities (k-means on standardised features); print each cluster with a plain "
        "description, its size and a segment definition that approximates it, with the "
        "definition's precision and recall against the cluster.",
    )
    found.add_argument(
        "--k",
        type=_within(discovery.MIN_K, discovery.MAX_K),
        default=5,
        metavar="N",
        help=f"clusters, {discovery.MIN_K} to {discovery.MAX_K} (default 5)",
    )
    found.add_argument(
        "--top-categories",
        type=_within(0, discovery.MAX_TOP_CATEGORIES),
        default=discovery.DEFAULT_TOP_CATEGORIES,
        metavar="M",
        help="category affinity shares among the features: the M categories with the most "
        f"affinity (0 to {discovery.MAX_TOP_CATEGORIES}, default "
        f"{discovery.DEFAULT_TOP_CATEGORIES})",
    )
    found.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of segment definitions, each ready to POST to /v1/segments",
    )


def _within(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{low} to {high}, not {value}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
