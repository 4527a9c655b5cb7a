"""The search behind the fleet's ALS defaults, on a validation split carved from train.

    python -m services.evaluation.tune --data FILE --split temporal --cutoff 2011-11-09

The outer split's test part is never read: the validation split is the same kind of split
made from the train part alone (services/evaluation/splits.py, `validation`). Each setting
is trained with the fleet's own training code (`training.build`: confidences, ALS, indexes)
and scored through the ALS source as served (members folded in from their lines), in two
stages: confidence form, alpha and regularization at 64 factors, then the number of
factors at the best of those. NDCG@10 with repeats allowed and with bought items excluded
is printed per setting; the best is chosen on their mean, so that a setting must do well
on both (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from services.evaluation import splits
from services.evaluation.cli import add_split_options, split_dataset
from services.evaluation.data import read_dataset
from services.evaluation.fleet import ServedModel
from services.evaluation.metrics import score
from services.retrieval import sources
from services.retrieval.fusion import Calibration
from services.retrieval.model import RetrievalModel
from services.retrieval.settings import RetrievalSettings
from services.retrieval.training import build, read_frame

FORMS = ("log", "linear")
ALPHAS = (0.5, 1.0, 2.0, 5.0)
REGULARIZATIONS = (1.0, 3.0, 10.0, 30.0)
FACTORS = (32, 64, 128)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    dataset = read_dataset(args.data)
    outer = split_dataset(dataset, args)
    inner = splits.validation(outer)
    relevant = splits.relevant(inner)
    members = sorted(relevant)
    print(
        f"validation split {inner.name}: {len(inner.train)} train and {len(inner.test)} "
        f"test interactions, {len(members)} members (outer test not read)",
        flush=True,
    )
    frame, activity = _frame(inner.train, dataset.categories)
    results: list[dict[str, Any]] = []

    def trial(**chosen: Any) -> dict[str, Any]:
        found = _score(frame, activity, members, relevant, chosen)
        results.append(found)
        print(json.dumps(found), flush=True)
        return found

    stage1 = [
        trial(factors=64, confidence=f, alpha=a, regularization=r)
        for f, a, r in product(FORMS, ALPHAS, REGULARIZATIONS)
    ]
    best = max(stage1, key=lambda r: r["mean"])
    for factors in FACTORS:
        if factors != 64:
            trial(
                factors=factors,
                confidence=best["confidence"],
                alpha=best["alpha"],
                regularization=best["regularization"],
            )
    chosen = max(results, key=lambda r: r["mean"])
    print(f"best: {json.dumps(chosen)}")
    if args.json:
        args.json.write_text(json.dumps({"split": inner.name, "results": results}, indent=1))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.evaluation.tune")
    parser.add_argument("--data", type=Path, required=True)
    add_split_options(parser)
    parser.add_argument("--json", type=Path, help="also write every trial here")
    return parser


def _frame(train: Sequence[Any], categories: dict[str, str]) -> tuple[Any, Any]:
    """The validation train part in the fleet's interaction store, read back as training
    and serving read it."""
    loader = ServedModel(RetrievalSettings(calibration_members=0))
    store = loader.load_store(train, categories)
    frame = read_frame(store.training_rows())

    def activity(member: str) -> list[Any]:
        return store.member_activity(member, loader.settings.history_limit)

    return frame, activity


def _score(
    frame: Any,
    activity: Any,
    members: list[str],
    relevant: dict[str, set[str]],
    chosen: dict[str, Any],
) -> dict[str, Any]:
    settings = RetrievalSettings(calibration_members=0, **chosen)
    model = RetrievalModel("tuning", {}, build(frame, settings, Calibration()))
    everything = np.ones(model.item_count, dtype=bool)
    allowed, excluded = {}, {}
    for member in members:
        ask = sources.Ask(activity(member), (), 10, everything, datetime.now(UTC))
        allowed[member] = sources.als(model, ask, keep_owned=True)
        excluded[member] = sources.als(model, ask)  # what the member bought set aside
    with_repeats = score(allowed, relevant, [10])["ndcg@10"]
    without = score(excluded, relevant, [10])["ndcg@10"]
    return chosen | {
        "ndcg@10": round(with_repeats, 4),
        "ndcg@10_excluding_bought": round(without, 4),
        "mean": round((with_repeats + without) / 2, 4),
    }


if __name__ == "__main__":
    sys.exit(main())
