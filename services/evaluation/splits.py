"""Train/test splits of a data set, and validation splits carved from the train part only.

Three protocols: `temporal` (everything before a cut-off trains, the rest tests: no look into
the future), `last_basket` (each member's latest basket tests) and `random_per_member`.
`validation` applies the same protocol to a split's train part, so that tuning a model never
sees the test interactions.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from services.evaluation.data import PURCHASE, Dataset, Interaction, by_time

RELEVANT_TYPES: tuple[str, ...] = (PURCHASE,)
SPLIT_KINDS = ("temporal", "last_basket", "random")
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SEED = 42
SECONDS_PER_DAY = 86_400.0

Data = Dataset | Sequence[Interaction]


class SplitError(ValueError):
    """A split that leaves nothing to train or to test on."""


@dataclass
class Split:
    """A train and a test part; `params` records how they were made (for the report)."""

    name: str
    params: dict[str, Any]
    train: list[Interaction]
    test: list[Interaction] = field(default_factory=list)

    def describe(self, include_cold: bool = False) -> dict[str, Any]:
        """Name, parameters and counts of both parts, for the report."""
        return {
            "name": self.name,
            "params": dict(self.params),
            "train_interactions": len(self.train),
            "test_interactions": len(self.test),
            "train_members": len({i.member_id for i in self.train}),
            "train_items": len({i.item_id for i in self.train}),
            "test_members": len(test_members(self, include_cold)),
            "include_cold": include_cold,
        }

    def as_of(self) -> datetime:
        """The instant the train part describes the shop at: a temporal split's cut-off;
        the newest train interaction for the others, which have no single cut-off."""
        cutoff = self.params.get("cutoff") if self.name.endswith("temporal") else None
        if isinstance(cutoff, str):
            moment = datetime.fromisoformat(cutoff)
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        if not self.train:
            raise SplitError(f"{self.name} split {self.params}: nothing to train on")
        return max(i.at for i in self.train)


def interactions_of(data: Data) -> list[Interaction]:
    """The interactions of a data set or sequence, sorted by time."""
    rows = data.interactions if isinstance(data, Dataset) else data
    return by_time(rows)


def basket_key(interaction: Interaction) -> str:
    """The basket an interaction belongs to; its timestamp when the source has no basket ids."""
    return interaction.basket or "@" + interaction.at.isoformat()


def _checked(split: Split) -> Split:
    if not split.train:
        raise SplitError(f"{split.name} split {split.params}: nothing left to train on")
    if not split.test:
        raise SplitError(f"{split.name} split {split.params}: nothing left to test on")
    return split


# --------------------------------------------------------------------------- temporal


def temporal(data: Data, cutoff: datetime | None = None, last_days: float | None = None) -> Split:
    """Train strictly before `cutoff`, test at or after it.

    With `last_days` instead, the cut-off is that many days before the newest interaction.
    A naive `cutoff` is read as UTC. `params["window_days"]` is the test window's length
    (cut-off to newest interaction), which `validation` reuses.
    """
    rows = interactions_of(data)
    if not rows:
        raise SplitError("temporal split of no interactions")
    newest = rows[-1].at
    moment = _cutoff(newest, cutoff, last_days)
    window_days = (newest - moment).total_seconds() / SECONDS_PER_DAY
    params = {"cutoff": moment.isoformat(), "window_days": round(window_days, 6)}
    train = [i for i in rows if i.at < moment]
    test = [i for i in rows if i.at >= moment]
    return _checked(Split("temporal", params, train, test))


def _cutoff(newest: datetime, cutoff: datetime | None, last_days: float | None) -> datetime:
    if (cutoff is None) == (last_days is None):
        raise ValueError("temporal split: give exactly one of cutoff and last_days")
    if cutoff is not None:
        return cutoff.replace(tzinfo=UTC) if cutoff.tzinfo is None else cutoff.astimezone(UTC)
    assert last_days is not None
    if last_days <= 0:
        raise ValueError(f"temporal split: last_days must be > 0, not {last_days}")
    return newest - timedelta(days=last_days)


# --------------------------------------------------------------------------- last basket


def last_basket(data: Data) -> Split:
    """Leave-last-basket-out: each member's latest basket tests, the rest trains.

    A basket is an order id, or a timestamp when the source has none; the latest is the one
    with the newest interaction. Members with a single basket only train.
    """
    rows = interactions_of(data)
    latest: dict[str, dict[str, datetime]] = defaultdict(dict)
    for row in rows:  # sorted by time: the last write per basket is its newest moment
        latest[row.member_id][basket_key(row)] = row.at
    held_out = {
        member: max(baskets.items(), key=lambda kv: (kv[1], kv[0]))[0]
        for member, baskets in latest.items()
        if len(baskets) >= 2
    }
    test = [r for r in rows if held_out.get(r.member_id) == basket_key(r)]
    train = [r for r in rows if held_out.get(r.member_id) != basket_key(r)]
    params = {"members_with_test_basket": len(held_out)}
    return _checked(Split("last_basket", params, train, test))


# --------------------------------------------------------------------------- random


def random_per_member(
    data: Data, test_fraction: float = DEFAULT_TEST_FRACTION, seed: int = DEFAULT_SEED
) -> Split:
    """Per member, a random `test_fraction` of their interactions tests (at least one).

    Every member keeps at least one train interaction: members with a single interaction only
    train. The same data, fraction and seed give the same split.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, not {test_fraction}")
    rows = interactions_of(data)
    positions: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        positions[row.member_id].append(index)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for member in sorted(positions):  # a fixed order: the seed alone decides the draw
        own = positions[member]
        count = min(len(own) - 1, max(1, round(test_fraction * len(own))))
        chosen.update(rng.sample(own, count) if count > 0 else ())
    train = [row for index, row in enumerate(rows) if index not in chosen]
    test = [row for index, row in enumerate(rows) if index in chosen]
    params = {"test_fraction": test_fraction, "seed": seed}
    return _checked(Split("random", params, train, test))


# --------------------------------------------------------------------------- validation


def validation(
    outer: Split | Sequence[Interaction], kind: str | None = None, **params: Any
) -> Split:
    """The same kind of split made from `outer`'s train part only, for tuning.

    Nothing of `outer.test` is in the result. For `temporal` the validation window has the
    outer test window's length and ends at the outer cut-off, unless `cutoff` or `last_days`
    is given; `random` reuses the outer fraction and seed unless given. A plain sequence of
    interactions is split as it is (then `kind` is required).
    """
    if isinstance(outer, Split):
        rows, chosen = outer.train, kind or outer.name
        inherited = dict(outer.params)
    else:
        if kind is None:
            raise ValueError("validation of plain interactions: give the kind of split")
        rows, chosen, inherited = list(outer), kind, {}
    chosen = chosen.replace("-", "_")
    split = _inner(rows, chosen, inherited, params)
    split.name = f"validation_{split.name}"
    return split


def _inner(
    rows: list[Interaction], kind: str, inherited: dict[str, Any], params: dict[str, Any]
) -> Split:
    if kind == "temporal":
        if "cutoff" in params or "last_days" in params:
            return temporal(rows, params.get("cutoff"), params.get("last_days"))
        if "cutoff" not in inherited:
            raise ValueError("temporal validation: give cutoff or last_days")
        outer_cutoff = datetime.fromisoformat(inherited["cutoff"])
        window = timedelta(days=float(inherited["window_days"]))
        return temporal(rows, cutoff=outer_cutoff - window)
    if kind == "last_basket":
        return last_basket(rows)
    if kind == "random":
        fraction = params.get("test_fraction", inherited.get("test_fraction"))
        seed = params.get("seed", inherited.get("seed", DEFAULT_SEED))
        return random_per_member(rows, fraction or DEFAULT_TEST_FRACTION, seed)
    raise ValueError(f"unknown split {kind!r}: {', '.join(SPLIT_KINDS)}")


# --------------------------------------------------------------------------- who is tested


def test_members(
    split: Split, include_cold: bool = False, types: Collection[str] = RELEVANT_TYPES
) -> list[str]:
    """Members with a test interaction of a relevant type and (unless `include_cold`) a train
    interaction: a model cannot personalise for members it never saw, so by default they are
    left out rather than counted as popularity's wins or losses."""
    tested = {i.member_id for i in split.test if i.type in types}
    if not include_cold:
        tested &= {i.member_id for i in split.train}
    return sorted(tested)


# pytest would collect the name in test modules that import it: it is not a test.
test_members.__test__ = False  # type: ignore[attr-defined]


def relevant(
    split: Split, include_cold: bool = False, types: Collection[str] = RELEVANT_TYPES
) -> dict[str, set[str]]:
    """Binary relevance: each test member's set of test items of a relevant type."""
    members = set(test_members(split, include_cold, types))
    items: dict[str, set[str]] = {member: set() for member in sorted(members)}
    for row in split.test:
        if row.member_id in members and row.type in types:
            items[row.member_id].add(row.item_id)
    return items
