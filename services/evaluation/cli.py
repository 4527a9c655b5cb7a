"""`recofleet evaluate`: offline evaluation of the baselines and the fleet's models, and
`recofleet evaluate-off-policy`: rankers' click rates estimated from logged bandit feedback.

`add_parser(subparsers)` adds both sub-commands to the main argparse parser and `run(args)`
executes either; `main(argv)` runs them alone (`python -m services.evaluation.cli ...`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from services.evaluation import off_policy, splits
from services.evaluation.baselines import Model
from services.evaluation.data import KINDS, DataError, Dataset, by_time, read_dataset
from services.evaluation.models import DEFAULT_MODELS, models_by_name
from services.evaluation.report import evaluate, machine, versions, write_report

SPLITS = {"temporal": "temporal", "last-basket": "last_basket", "random": "random"}
# `--data store`: the interactions the fleet's retrieval service recorded; `--data bus`:
# what the event bus still holds.
STORE = "store"
BUS = "bus"
DEFAULT_LAST_DAYS = 30.0
SUMMARY_METRICS = ("ndcg", "recall", "hit_rate")
SUMMARY_MODES = (("models", ""), ("models_excluding_bought", " excl."))
OFF_POLICY = "evaluate-off-policy"
# The sub-commands `add_parser` adds; `run` executes any of them.
COMMANDS = ("evaluate", OFF_POLICY)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `evaluate` and `evaluate-off-policy` to an argparse subparsers object; returns the
    parser of `evaluate`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "evaluate",
        help="offline evaluation of recommendation models on a data set",
        description="Split a data set, fit each model on the train part, score its top-k "
        "lists on the test part (repeats allowed, and train purchases excluded), and write "
        "report.json and report.html into --out.",
    )
    source = parser.add_argument_group("data (either --data, or --train and --test)")
    source.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="one data set to split; 'store' reads the fleet's retrieval store, 'bus' what "
        "the fleet's event bus still holds",
    )
    source.add_argument(
        "--format", choices=("auto", *KINDS), default="auto", help="data format (default: auto)"
    )
    source.add_argument("--train", type=Path, metavar="FILE", help="a ready train part")
    source.add_argument("--test", type=Path, metavar="FILE", help="a ready test part")
    add_split_options(parser)
    parser.add_argument("--k", type=_ks, default=[5, 10, 20], help="list lengths (5,10,20)")
    parser.add_argument(
        "--models",
        type=_names,
        default=list(DEFAULT_MODELS),
        help=f"comma-separated (default: {','.join(DEFAULT_MODELS)})",
    )
    parser.add_argument(
        "--include-cold", action="store_true", help="also test members without train history"
    )
    parser.add_argument(
        "--relevant",
        type=_names,
        default=list(splits.RELEVANT_TYPES),
        metavar="TYPES",
        help="event types whose test items count as hits (default: purchase)",
    )
    parser.add_argument(
        "--save-recommendations", type=Path, metavar="FILE", help="lists as JSON lines"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="report folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)
    add_off_policy_parser(subparsers)
    return parser


def add_off_policy_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `evaluate-off-policy` (docs/models.md) to an argparse subparsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        OFF_POLICY,
        help="estimate rankers' click rates from logged bandit feedback (Open Bandit Dataset)",
        description="Estimate, from the logs of one policy, the click rate other ranking "
        "policies would get (IPS, self-normalised IPS and doubly robust, each with an "
        "interval and its effective sample size), print the table and write "
        "off_policy.json into --out.",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="DIR",
        help="the Open Bandit Dataset's folder (read with --behavior and --campaign), or one "
        "campaign folder (its log CSV and item_context.csv)",
    )
    parser.add_argument(
        "--behavior",
        choices=off_policy.BEHAVIORS,
        default="random",
        help="logging policy: uniform random or Bernoulli Thompson sampling (default: random)",
    )
    parser.add_argument(
        "--campaign", choices=off_policy.CAMPAIGNS, default="all", help="(default: all)"
    )
    parser.add_argument(
        "--folds",
        type=_at_least_two,
        default=off_policy.DEFAULT_FOLDS,
        metavar="K",
        help="cross-fitting folds: the reward model and the rankers' click rates of each fold "
        f"come from the others (default: {off_policy.DEFAULT_FOLDS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=off_policy.DEFAULT_SEED,
        metavar="S",
        help=f"the folds' draw (default: {off_policy.DEFAULT_SEED})",
    )
    parser.add_argument(
        "--confidence",
        type=_share,
        default=off_policy.DEFAULT_CONFIDENCE,
        metavar="C",
        help=f"of the intervals (default: {off_policy.DEFAULT_CONFIDENCE})",
    )
    parser.add_argument(
        "--temperature",
        type=_positive,
        default=off_policy.DEFAULT_TEMPERATURE,
        metavar="T",
        help="of the softened rankers: softmax(standardised scores / T) "
        f"(default: {off_policy.DEFAULT_TEMPERATURE:g})",
    )
    parser.add_argument(
        "--regularization",
        type=_positive,
        default=off_policy.DEFAULT_REGULARIZATION,
        metavar="C",
        help="the reward model's inverse L2 strength (default: "
        f"{off_policy.DEFAULT_REGULARIZATION:g})",
    )
    parser.add_argument("--out", type=Path, metavar="DIR", help="write off_policy.json here")
    parser.set_defaults(handler=run_off_policy)
    return parser


def add_split_options(parser: argparse.ArgumentParser) -> None:
    """--split and its options (shared with `python -m services.evaluation.tune`)."""
    group = parser.add_argument_group("split (with --data)")
    group.add_argument("--split", choices=tuple(SPLITS), default="temporal")
    group.add_argument(
        "--cutoff", type=_cutoff, metavar="YYYY-MM-DD[THH:MM]", help="temporal: test from here"
    )
    group.add_argument(
        "--last-days",
        type=float,
        metavar="N",
        help=f"temporal: test the last N days (default {DEFAULT_LAST_DAYS:g} without --cutoff)",
    )
    group.add_argument(
        "--test-fraction",
        type=float,
        default=splits.DEFAULT_TEST_FRACTION,
        metavar="F",
        help=f"random: share of each member's interactions tested ({splits.DEFAULT_TEST_FRACTION})",
    )
    group.add_argument(
        "--seed", type=int, default=splits.DEFAULT_SEED, metavar="N", help="random: the draw"
    )


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated whole numbers, not {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"k values must be >= 1, not {text!r}")
    return ks


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _at_least_two(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number, not {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"at least 2, not {value}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number, not {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"between 0 and 1 (exclusive), not {value}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number, not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a positive number, not {value}")
    return value


def _cutoff(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"YYYY-MM-DD or YYYY-MM-DDTHH:MM, not {text!r}") from None


# --------------------------------------------------------------------------- running


def run(args: argparse.Namespace) -> int:
    """Execute `recofleet evaluate` (or the sub-command whose handler `args` carries); 0 on
    success, 1 on bad data, 2 on bad options."""
    handler = getattr(args, "handler", run)
    if handler is not run:
        return int(handler(args))
    problem = _check_options(args)
    if problem:
        print(f"recofleet evaluate: {problem}", file=sys.stderr)
        return 2
    models, unavailable = _models(args.models)
    if models is None:
        return 2
    timings: dict[str, float] = {}
    try:
        dataset, split = _data_and_split(args, not args.no_progress, timings)
    except (DataError, ValueError) as exc:
        print(f"recofleet evaluate: {exc}", file=sys.stderr)
        return 1
    _evaluate_and_write(args, dataset, split, models, unavailable, timings)
    return 0


def _evaluate_and_write(
    args: argparse.Namespace,
    dataset: Dataset,
    split: splits.Split,
    models: list[Model],
    unavailable: dict[str, str],
    timings: dict[str, float],
) -> None:
    started = time.perf_counter()
    report = evaluate(
        dataset,
        split,
        models,
        ks=args.k,
        include_cold=args.include_cold,
        save_recommendations=args.save_recommendations,
        progress=not args.no_progress,
        relevant_types=tuple(args.relevant),
    )
    timings["evaluate_seconds"] = time.perf_counter() - started
    report["skipped"].update(unavailable)
    report["timings"] = timings
    started = time.perf_counter()
    paths = write_report(report, args.out)
    steps = {**timings, "write_seconds": time.perf_counter() - started}
    _print_summary(report, [*paths, args.save_recommendations])
    print(
        "wall time: "
        + ", ".join(f"{k.removesuffix('_seconds')} {v:.1f} s" for k, v in steps.items())
    )


def _check_options(args: argparse.Namespace) -> str | None:
    if args.data is not None and (args.train is not None or args.test is not None):
        return "give either --data or --train and --test, not both"
    if args.data is None and (args.train is None or args.test is None):
        return "give --data FILE, or --train FILE and --test FILE"
    if args.cutoff is not None and args.last_days is not None:
        return "give --cutoff or --last-days, not both"
    return None


def _models(names: Sequence[str]) -> tuple[list[Model] | None, dict[str, str]]:
    """The models to run, and the reasons of those known but not available here."""
    registry = models_by_name()
    unknown = [n for n in names if n not in registry]
    if unknown:
        print(
            f"recofleet evaluate: unknown model(s) {', '.join(unknown)}; known: "
            f"{', '.join(registry)}",
            file=sys.stderr,
        )
        return None, {}
    return [registry[n]() for n in dict.fromkeys(names)], {}


def _data_and_split(
    args: argparse.Namespace, progress: bool, timings: dict[str, float]
) -> tuple[Dataset, splits.Split]:
    """Read the data and split it (or read both parts); records the seconds of each step."""
    started = time.perf_counter()
    if args.data is not None and str(args.data) in (STORE, BUS):
        dataset = _read_store() if str(args.data) == STORE else _read_bus()
        timings["read_seconds"] = time.perf_counter() - started
        split = split_dataset(dataset, args)
    elif args.data is not None:
        dataset = read_dataset(args.data, args.format, progress)
        timings["read_seconds"] = time.perf_counter() - started
        split = split_dataset(dataset, args)
    else:
        train = read_dataset(args.train, args.format, progress)
        test = read_dataset(args.test, args.format, progress)
        timings["read_seconds"] = time.perf_counter() - started
        params = {"train": str(args.train), "test": str(args.test)}
        split = splits.Split("given", params, train.interactions, test.interactions)
        dataset = _merged(train, test)
    timings["split_seconds"] = time.perf_counter() - started - timings["read_seconds"]
    return dataset, split


def _read_bus() -> Dataset:
    """The fleet's event bus, found as the services find it (RECOFLEET_BUS and its
    settings), read from the earliest record it keeps without moving any service."""
    from services.common.bus import open_bus
    from services.common.settings import FleetSettings
    from services.evaluation.bus_data import read_bus

    fleet = FleetSettings()
    bus = open_bus(fleet)
    try:
        return read_bus(bus, bus.location())
    finally:
        bus.close()


def _read_store() -> Dataset:
    """The fleet's retrieval store, found as the services find it (RECOFLEET_DATA_DIR,
    RECOFLEET_RETRIEVAL_DATABASE_URL): read only."""
    from services.common.settings import FleetSettings
    from services.evaluation.fleet import read_store
    from services.retrieval.server import open_store
    from services.retrieval.settings import RetrievalSettings

    fleet, settings = FleetSettings(), RetrievalSettings()
    store = open_store(fleet, settings)
    try:
        where = settings.database_url or fleet.sqlite_url("retrieval")
        return read_store(store, where.split("@")[-1])
    finally:
        store.close()


def split_dataset(dataset: Dataset, args: argparse.Namespace) -> splits.Split:
    """The split the options of `add_split_options` ask for."""
    kind = SPLITS[args.split]
    if kind == "last_basket":
        return splits.last_basket(dataset)
    if kind == "random":
        return splits.random_per_member(dataset, args.test_fraction, args.seed)
    last_days = args.last_days
    if args.cutoff is None and last_days is None:
        last_days = DEFAULT_LAST_DAYS
    return splits.temporal(dataset, cutoff=args.cutoff, last_days=last_days)


def _merged(train: Dataset, test: Dataset) -> Dataset:
    """One data set of both parts, for the report's description."""
    return Dataset(
        name=train.name,
        source=f"{train.source} + {test.source}",
        interactions=by_time([*train.interactions, *test.interactions]),
        categories={**test.categories, **train.categories},
        prices={**test.prices, **train.prices},
        dropped={**test.dropped, **train.dropped},
    )


def _print_summary(report: dict[str, Any], paths: Sequence[Path | None]) -> None:
    k = 10 if 10 in report["ks"] else report["ks"][-1]
    modes = [(key, suffix) for key, suffix in SUMMARY_MODES if key in report]
    headers = ["model"] + [f"{m}@{k}{suffix}" for _, suffix in modes for m in SUMMARY_METRICS]
    rows = []
    names = list(dict.fromkeys(n for key, _ in modes for n in report.get(key, {})))
    for name in names:
        cells = [name]
        for key, _ in modes:
            entry = report[key].get(name, {})
            cells += [f"{entry.get(f'{m}@{k}', float('nan')):.4f}" for m in SUMMARY_METRICS]
        rows.append(cells)
    print(_columns(headers, rows))
    for name, note in report.get("notes", {}).items():
        if note.get("summary"):
            print(f"{name}: {note['summary']}")
    for name, reason in report["skipped"].items():
        print(f"skipped {name}: {reason}")
    for path in paths:
        if path is not None:
            print(f"wrote {path}")


def _columns(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def run_off_policy(args: argparse.Namespace) -> int:
    """Execute `recofleet evaluate-off-policy`; 0 on success, 1 on bad data."""
    steps: dict[str, float] = {}
    started = time.perf_counter()
    try:
        folder = off_policy.campaign_folder(args.data, args.behavior, args.campaign)
        log = off_policy.read_open_bandit(folder)
        steps["read_seconds"] = time.perf_counter() - started
        if log.n_rounds < args.folds:
            raise DataError(f"{log.source}: {log.n_rounds} rounds, fewer than {args.folds} folds")
        report = off_policy.evaluate_off_policy(
            log,
            folds=args.folds,
            seed=args.seed,
            confidence=args.confidence,
            temperature=args.temperature,
            regularization=args.regularization,
        )
    except DataError as exc:
        print(f"recofleet {OFF_POLICY}: {exc}", file=sys.stderr)
        return 1
    report["timings"] = {**steps, **report["timings"]}
    report["versions"] = {**versions(), "scikit-learn": _version("scikit-learn")}
    report["machine"] = machine()
    report["created_at"] = datetime.now(UTC).isoformat()
    print(off_policy.format_table(report))
    if args.out is not None:
        print(f"wrote {off_policy.write_report(report, args.out)}")
    print(
        "wall time: "
        + ", ".join(f"{k.removesuffix('_seconds')} {v:.1f} s" for k, v in report["timings"].items())
    )
    return 0


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """`recofleet evaluate` and `recofleet evaluate-off-policy` on their own."""
    parser = argparse.ArgumentParser(prog="recofleet")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
