"""Train a retrieval model from the interactions and publish it (the trainer job's core).

One training: read every interaction line; fit ALS on confidences (1 + alpha·f(summed
weight), f = log1p by default); count popularity, trending and bought-together; then
calibrate the sources (services/retrieval/fusion.py): hold out a fifth of sampled
members' lines, build the same model on the rest, and measure how often each source's proposals
at each rank were then bought. The version written carries its data window, settings
and those measurements (docs/retrieval.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from services.retrieval import sources
from services.retrieval.catalog_view import CatalogView
from services.retrieval.fusion import Calibration, fit_curve, fit_strengths, fuse
from services.retrieval.index import build_index
from services.retrieval.model import FORMAT, Artifacts, RetrievalModel
from services.retrieval.model_store import ModelStore
from services.retrieval.settings import SOURCES, RetrievalSettings
from services.retrieval.store import Activity, InteractionStore, TrainingRow

log = logging.getLogger(__name__)

HOLDOUT_SHARE = 0.2  # a fifth of a member's lines: what calibration predicts
HOLDOUTS = ("newest", "random")
# Buy-again half-lives training chooses from, in days (the last one: practically none).
HALF_LIVES = (30.0, 90.0, 365.0, 36_500.0)
DEFAULT_HALF_LIFE = 90.0
CALIBRATION_RANKS = 100
MIN_BASKET_SHARE = 0.1  # below this share of multi-item baskets, members are the baskets
DAY = 86_400.0


class NotEnoughData(RuntimeError):
    """Too few interactions to learn anything from."""


@dataclass(frozen=True)
class TrainingOutcome:
    version: str
    trained: bool
    seconds: float
    meta: dict[str, Any]


@dataclass(frozen=True)
class Frame:
    """Interaction lines as arrays over member and item positions (oldest first)."""

    member_ids: list[str]
    item_ids: list[str]
    member: np.ndarray
    item: np.ndarray
    event_type: list[str]
    weight: np.ndarray
    at: np.ndarray  # seconds since the epoch
    basket: np.ndarray

    def __len__(self) -> int:
        return len(self.member)

    def take(self, keep: np.ndarray) -> Frame:
        """The lines where `keep` holds, positions unchanged."""
        types = [t for t, k in zip(self.event_type, keep, strict=True) if k]
        return Frame(
            self.member_ids,
            self.item_ids,
            self.member[keep],
            self.item[keep],
            types,
            self.weight[keep],
            self.at[keep],
            self.basket[keep],
        )

    def owned(self) -> np.ndarray:
        return np.fromiter((t in sources.OWNING_TYPES for t in self.event_type), bool, len(self))


def read_frame(rows: Iterable[TrainingRow]) -> Frame:
    members: dict[str, int] = {}
    items: dict[str, int] = {}
    baskets: dict[str, int] = {}
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
    for row in rows:
        columns[0].append(members.setdefault(row.member_id, len(members)))
        columns[1].append(items.setdefault(row.item_id, len(items)))
        columns[2].append(row.event_type)
        columns[3].append(row.weight)
        columns[4].append(row.at.timestamp())
        columns[5].append(baskets.setdefault(row.basket, len(baskets)))
    return Frame(
        list(members),
        list(items),
        np.asarray(columns[0], dtype=np.int32),
        np.asarray(columns[1], dtype=np.int32),
        columns[2],
        np.asarray(columns[3], dtype=np.float32),
        np.asarray(columns[4], dtype=np.float64),
        np.asarray(columns[5], dtype=np.int64),
    )


def recipe(settings: RetrievalSettings) -> str:
    """What a model depends on besides the data: retrain when any of it changes."""
    fields = (
        "event_weights",
        "factors",
        "iterations",
        "regularization",
        "alpha",
        "confidence",
        "random_seed",
        "trending_days",
        "neighbours",
        "calibration_members",
        "exact_search_below",
    )
    spec = json.dumps({f: getattr(settings, f) for f in fields}, sort_keys=True)
    return hashlib.sha256(f"{FORMAT}:{spec}".encode()).hexdigest()[:16]


def train(
    store: InteractionStore,
    models: ModelStore,
    settings: RetrievalSettings,
    *,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> TrainingOutcome:
    """Train and publish a new version, unless the current one was trained on the same data."""
    started = time.perf_counter()
    fingerprint = f"{store.fingerprint()}:{recipe(settings)}"
    current = models.current()
    if current and not force and models.meta(current).get("fingerprint") == fingerprint:
        return TrainingOutcome(current, False, time.perf_counter() - started, models.meta(current))
    say = progress or (lambda step: log.info("training: %s", step))
    say("reading interactions")
    frame = read_frame(store.training_rows())
    catalog = CatalogView(store.catalog_items())

    def write(folder: Path) -> dict[str, Any]:
        meta = fit(frame, catalog, settings, say, folder)
        return meta | {"fingerprint": fingerprint}

    version = models.publish(write)
    elapsed = time.perf_counter() - started
    log.info("trained retrieval model %s in %.1fs", version, elapsed)
    return TrainingOutcome(version, True, elapsed, models.meta(version))


def fit(
    frame: Frame,
    catalog: CatalogView,
    settings: RetrievalSettings,
    say: Callable[[str], None],
    folder: Path | None = None,
) -> dict[str, Any]:
    """Build the model of `frame` (written to `folder` when given); returns its meta."""
    _check_enough(frame)
    say("calibrating the sources on held-out data")
    calibration, measured, half_life = calibrate(frame, catalog, settings)
    say(f"fitting ALS ({settings.factors} factors, {settings.iterations} iterations)")
    losses: list[float] = []
    parts = build(frame, settings, calibration, half_life, losses)
    if folder is not None:
        say("writing the model")
        parts.save(folder)
    return {
        "format": FORMAT,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "members": len(frame.member_ids),
        "items": len(frame.item_ids),
        "interactions": len(frame),
        "factors": settings.factors,
        "recipe": recipe(settings),
        "settings": _settings_record(settings),
        "data_window": {"first": _iso(frame.at.min()), "last": _iso(frame.at.max())},
        "index": {"ip": parts.ip_index.kind, "cosine": parts.cosine_index.kind},
        "calibration": {s: c[:10] for s, c in calibration.by_source.items()},
        "calibration_by_strength": calibration.to_json()["by_strength"],
        "buy_again_half_life_days": half_life,
        "training_loss": losses,
        "metrics": measured,
        # Members are folded in from their interactions when served: the model files hold
        # item factors and item figures only, so erasing a member never touches a model.
        "holds_member_data": False,
    }


def build(
    frame: Frame,
    settings: RetrievalSettings,
    calibration: Calibration,
    half_life: float = DEFAULT_HALF_LIFE,
    losses: list[float] | None = None,
) -> Artifacts:
    """Every source's data for `frame`, item positions as in `frame.item_ids`."""
    weights, scale = confidences(frame, settings)
    als = fit_als(weights, settings, losses)
    factors = np.ascontiguousarray(als.item_factors, dtype=np.float32)
    return Artifacts(
        item_ids=frame.item_ids,
        als=als,
        popularity=popularity(frame),
        trending=trending(frame, settings.trending_days),
        together=bought_together(frame, settings.neighbours),
        ip_index=build_index(factors, "ip", settings.exact_search_below),
        cosine_index=build_index(factors, "cosine", settings.exact_search_below),
        calibration=calibration,
        weight_scale=scale,
        confidence=settings.confidence,
        buy_again_half_life_days=half_life,
    )


def confidences(frame: Frame, settings: RetrievalSettings) -> tuple[csr_matrix, float]:
    """ALS's input, f(summed weight / scale), and the scale: the median summed weight of a
    member and an item, so the defaults hold whether the data is purchases or views."""
    shape = (len(frame.member_ids), len(frame.item_ids))
    summed = csr_matrix((frame.weight, (frame.member, frame.item)), shape=shape)
    summed.sum_duplicates()
    summed.eliminate_zeros()
    scale = float(np.median(summed.data)) if summed.nnz else 1.0
    summed.data = summed.data / scale
    if settings.confidence == "log":
        summed.data = np.log1p(summed.data)
    summed.data = summed.data.astype(np.float32)
    return summed, scale


def fit_als(
    weights: csr_matrix, settings: RetrievalSettings, losses: list[float] | None = None
) -> AlternatingLeastSquares:
    """ALS on `weights`; with `losses`, the training loss after each iteration is appended
    to it (a pass over the data per iteration: the final model's training curve)."""
    # implicit runs its own threads; a second BLAS thread pool under them only thrashes.
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=settings.factors,
            regularization=settings.regularization,
            alpha=settings.alpha,
            iterations=settings.iterations,
            random_state=settings.random_seed,
            calculate_training_loss=losses is not None,
        )

        def record(iteration: int, seconds: float, loss: float | None) -> None:
            if losses is not None and loss is not None:
                losses.append(round(float(loss), 6))

        als.fit(weights, show_progress=False, callback=record)
    return als


def popularity(frame: Frame) -> np.ndarray:
    # Members who touched the item, scaled to [0, 1]: one enthusiast cannot make it popular.
    pairs = np.unique(frame.member.astype(np.int64) * len(frame.item_ids) + frame.item)
    reach = np.bincount(pairs % len(frame.item_ids), minlength=len(frame.item_ids))
    return _scaled(reach.astype(np.float32))


def trending(frame: Frame, half_life_days: float) -> np.ndarray:
    age_days = (frame.at.max() - frame.at) / DAY
    decayed = np.bincount(
        frame.item, weights=0.5 ** (age_days / half_life_days), minlength=len(frame.item_ids)
    )
    return _scaled(decayed.astype(np.float32))


def bought_together(frame: Frame, neighbours: int) -> csr_matrix:
    """Per item its `neighbours` strongest companions by cosine of basket co-occurrence;
    where orders hold one item each (ratings, views), a member's items make the basket."""
    baskets = frame.basket
    if _multi_item_share(frame) < MIN_BASKET_SHARE:
        baskets = frame.member.astype(np.int64)
    _, rows = np.unique(baskets, return_inverse=True)
    incidence = csr_matrix(
        (np.ones(len(frame), np.float32), (rows, frame.item)),
        shape=(int(rows.max()) + 1, len(frame.item_ids)),
    )
    incidence.data[:] = 1.0
    incidence.sum_duplicates()
    incidence.data[:] = 1.0
    counts = (incidence.T @ incidence).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    size = np.sqrt(np.asarray(incidence.sum(axis=0)).ravel())
    cosine = counts.multiply(1.0 / np.maximum(size, 1.0)[:, None]).multiply(
        1.0 / np.maximum(size, 1.0)[None, :]
    )
    return _top_per_row(cosine.tocsr(), neighbours)


def calibrate(
    frame: Frame, catalog: CatalogView, settings: RetrievalSettings
) -> tuple[Calibration, dict[str, Any], float]:
    """Measure each source on held-out lines of sampled members, with a model of the rest.

    Two hold-outs, pooled: each member's newest fifth (what they do next: favours the
    sources that follow recent activity) and a random fifth (what they do at all: favours
    long-run taste). Trusting either alone misleads on the other: on Online Retail the
    random one buries buy-again (NDCG@10 0.35 -> 0.23 on the temporal test), on MovieLens
    the newest one over-trusts bought-together (0.44 -> 0.25 on a random test).

    The newest fifth also chooses buy-again's half-life (`HALF_LIVES`): a gift shop's
    members rebuy what they bought lately (90 days did best on Online Retail), a grocer's
    what they always buy (no decay did best on Complete Journey).

    Both hold-outs together then choose how buy-again's proposals are read (`_read_better`).
    """
    half_life = DEFAULT_HALF_LIFE
    hits = {s: np.zeros(CALIBRATION_RANKS) for s in SOURCES}
    asked = {s: np.zeros(CALIBRATION_RANKS) for s in SOURCES}
    asked_for: list[Asked] = []
    strong: dict[str, tuple[list[float], list[bool]]] = {}
    sample = _sample(frame, settings)
    for kind in HOLDOUTS:
        held = _holdout(frame, sample, kind) if sample else None
        if held is None:
            continue
        # Searched exactly: building approximate indexes for a model used only here costs
        # more than the exact searches of a few thousand members.
        exact = settings.model_copy(update={"exact_search_below": len(frame.item_ids) + 1})
        model = RetrievalModel("calibration", {}, build(held.before, exact, Calibration()))
        history = _histories(held.before, settings.history_limit)
        allowed = catalog.allowed(model)
        if kind == "newest":
            half_life = _best_half_life(model, held, history, allowed, catalog)
        for member, wanted in held.targets.items():
            activity, now = history.get(member, []), held.starts[member]
            proposals, strengths = _proposals(model, catalog, activity, allowed, now, half_life)
            for source, items in proposals.items():
                hits[source][: len(items)] += np.fromiter((i in wanted for i in items), bool)
                asked[source][: len(items)] += 1
            for source, by_item in strengths.items():
                values, found = strong.setdefault(source, ([], []))
                values.extend(by_item.values())
                found.extend(i in wanted for i in by_item)
            asked_for.append(Asked(proposals, strengths, wanted))
    if not asked_for:
        return Calibration(), {"holdout": "too little data to hold any out"}, half_life
    by_rank = Calibration(
        {s: fit_curve(hits[s], asked[s]) for s in SOURCES if asked[s][0] > 0}, len(asked_for)
    )
    calibration, measured = _read_better(by_rank, strong, asked_for, settings)
    measured |= {
        "held_out": "per sampled member, their newest fifth of lines and a random fifth",
        "precision@10": {
            s: round(float(hits[s][:10].sum() / max(asked[s][:10].sum(), 1)), 4)
            for s in SOURCES
            if asked[s][0] > 0
        },
    }
    return calibration, {"holdout": measured}, half_life


def _read_better(
    by_rank: Calibration,
    strong: Mapping[str, tuple[list[float], list[bool]]],
    asked_for: list[Asked],
    settings: RetrievalSettings,
) -> tuple[Calibration, dict[str, Any]]:
    """Buy-again's proposals read by their rank, or by their strength (decayed purchases):
    whichever scores better on the held-out members. Strength tells a staple bought ten
    times from an item bought once, which ranks cannot (Complete Journey: NDCG@10 0.049 ->
    0.050 on its temporal test); ranks keep every member's own best items first, which a
    gift shop's members rebuy (Online Retail: 0.345 by rank, 0.324 by strength). The held-out
    figures chose each of those."""
    by_strength = replace(
        by_rank,
        by_strength={
            s: fit_strengths(np.array(values), np.array(found))
            for s, (values, found) in strong.items()
            if values
        },
    )
    rank_figures = _measured(by_rank, asked_for, settings)
    strength_figures = _measured(by_strength, asked_for, settings)
    if not by_strength.by_strength or strength_figures["ndcg@10"] <= rank_figures["ndcg@10"]:
        return by_rank, rank_figures | {"buy_again_read_by": "rank"}
    chosen = strength_figures | {"ndcg@10 by rank": rank_figures["ndcg@10"]}
    return by_strength, chosen | {"buy_again_read_by": "strength"}


def _measured(
    calibration: Calibration,
    asked_for: list[Asked],
    settings: RetrievalSettings,
) -> dict[str, Any]:
    """What the calibrated home mix scores on the held-out members (the ones calibration
    was fitted on, so a little optimistic)."""
    mix = settings.placements.get("home")
    weights = dict(mix.sources) if mix else dict.fromkeys(SOURCES, 1.0)
    ndcg = recall = 0.0
    for proposals, strengths, wanted in asked_for:
        home = {s: items for s, items in proposals.items() if s != "similar"}
        top = [f.item_id for f in fuse(home, calibration, weights, strengths, 10)]
        gains = sum(1 / np.log2(r + 2) for r, i in enumerate(top) if i in wanted)
        ndcg += gains / sum(1 / np.log2(r + 2) for r in range(min(len(wanted), 10)))
        recall += len(set(top) & wanted) / len(wanted)
    n = max(len(asked_for), 1)
    return {
        "members": len(asked_for),
        "ndcg@10": round(ndcg / n, 4),
        "recall@10": round(recall / n, 4),
    }


def _best_half_life(
    model: RetrievalModel,
    held: Holdout,
    history: dict[str, list[Activity]],
    allowed: np.ndarray,
    catalog: CatalogView,
) -> float:
    """The half-life under which buy-again's top 10 held the most of what members bought in
    their newest fifth (ties to the shorter one)."""
    hits = {}
    for half_life in HALF_LIVES:
        found = 0
        for member, wanted in held.targets.items():
            ask = sources.Ask(history.get(member, []), (), 10, allowed, held.starts[member])
            found += len(wanted.intersection(sources.buy_again(model, ask, catalog, half_life)))
        hits[half_life] = found
    best = max(hits.values())
    return DEFAULT_HALF_LIFE if best == 0 else min(h for h, n in hits.items() if n == best)


def _proposals(
    model: RetrievalModel,
    catalog: CatalogView,
    activity: list[Activity],
    allowed: np.ndarray,
    now: datetime,
    half_life: float,
) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    ask = sources.Ask(activity, (), CALIBRATION_RANKS, allowed, now)
    again = sources.buy_again_strengths(model, ask, catalog, half_life)
    found = {
        "als": sources.als(model, ask),
        "buy_again": list(again),
        "bought_together": sources.bought_together(model, ask),
        "content": sources.content(model, ask, catalog),
        "trending": sources.trending(model, ask),
    }
    if activity:
        # The product page's source, seeded as a product page would be: the latest item.
        seeded = sources.Ask(activity, (activity[0].item_id,), CALIBRATION_RANKS, allowed, now)
        found["similar"] = sources.similar(model, seeded)
    return found, {"buy_again": again}


class Asked(NamedTuple):
    """One held-out member: what each source proposed, buy-again's strengths, and what
    they then owned."""

    proposals: dict[str, list[str]]
    strengths: dict[str, dict[str, float]]
    wanted: set[str]


@dataclass(frozen=True)
class Holdout:
    """Calibration's data: the lines kept, and per sampled member what they owned in their
    held-out tail and when that tail began (their "now")."""

    before: Frame
    targets: dict[str, set[str]]
    starts: dict[str, datetime]


@dataclass(frozen=True)
class _Sample:
    """The members both hold-outs are drawn from, sampled once."""

    owned: np.ndarray  # per line: what a member's tail is measured on
    groups: list[np.ndarray]  # per sampled member, their line positions, oldest first
    rng_state: Mapping[str, Any]  # the generator after sampling: each hold-out draws from here


def _sample(frame: Frame, settings: RetrievalSettings) -> _Sample | None:
    """Up to `calibration_members` members with lines at two instants or more."""
    if settings.calibration_members == 0 or len(frame) < 50:
        return None
    owned = frame.owned()
    if not owned.any():
        owned = np.ones(len(frame), bool)
    order = np.lexsort((frame.at, frame.member))
    bounds = np.flatnonzero(np.diff(frame.member[order])) + 1
    groups = [g for g in np.split(order, bounds) if len(np.unique(frame.at[g])) >= 2]
    rng = np.random.default_rng(settings.random_seed)
    if len(groups) > settings.calibration_members:
        picked = rng.choice(len(groups), settings.calibration_members, replace=False)
        groups = [groups[i] for i in sorted(picked)]
    return _Sample(owned, groups, rng.bit_generator.state)


def _holdout(frame: Frame, sample: _Sample, kind: str) -> Holdout | None:
    """Hold out a fifth of each sampled member's lines: their newest (at least their latest
    instant), or a random fifth (at least one line). Per member rather than one cut of the
    whole data at one instant, which would leave only the members active at its end (on
    some data sets a handful). A member's "now" is the start of their newest held-out
    stretch, or their last line for the random kind."""
    owned, groups = sample.owned, sample.groups
    rng = np.random.default_rng()
    rng.bit_generator.state = sample.rng_state
    held = np.zeros(len(frame), bool)
    targets: dict[str, set[str]] = {}
    starts: dict[str, datetime] = {}
    for lines in groups:
        tail, start = _tail(frame, lines, kind, rng)
        wanted = {frame.item_ids[i] for i in frame.item[tail[owned[tail]]]}
        if not wanted:
            continue
        held[tail] = True
        member = frame.member_ids[frame.member[lines[0]]]
        targets[member] = wanted
        starts[member] = datetime.fromtimestamp(start, UTC)
    before = frame.take(~held)
    if not targets or len(np.unique(before.item)) < 2 or len(np.unique(before.member)) < 2:
        return None
    return Holdout(before, targets, starts)


def _tail(
    frame: Frame, lines: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    if kind == "random":
        drawn = lines[rng.random(len(lines)) < HOLDOUT_SHARE]
        return (drawn if len(drawn) else lines[-1:]), float(frame.at[lines[-1]])
    start = min(float(np.quantile(frame.at[lines], 1 - HOLDOUT_SHARE)), frame.at[lines[-1]])
    return lines[frame.at[lines] >= start], start


def _histories(frame: Frame, limit: int) -> dict[str, list[Activity]]:
    lines: dict[str, list[Activity]] = {}
    for position in range(len(frame) - 1, -1, -1):
        member = frame.member_ids[frame.member[position]]
        kept = lines.setdefault(member, [])
        if len(kept) < limit:
            kept.append(
                Activity(
                    frame.item_ids[frame.item[position]],
                    frame.event_type[position],
                    float(frame.weight[position]),
                    datetime.fromtimestamp(float(frame.at[position]), UTC),
                )
            )
    return lines


def _multi_item_share(frame: Frame) -> float:
    _, sizes = np.unique(frame.basket, return_counts=True)
    return float((sizes > 1).mean()) if len(sizes) else 0.0


def _top_per_row(matrix: csr_matrix, keep: int) -> csr_matrix:
    data, indices, indptr = [], [], [0]
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        values, columns = matrix.data[start:end], matrix.indices[start:end]
        if len(values) > keep:
            best = np.argpartition(-values, keep)[:keep]
            values, columns = values[best], columns[best]
        order = np.argsort(-values, kind="stable")
        data.append(values[order].astype(np.float32))
        indices.append(columns[order])
        indptr.append(indptr[-1] + len(order))
    return csr_matrix(
        (np.concatenate(data) if data else [], np.concatenate(indices) if indices else [], indptr),
        shape=matrix.shape,
    )


def _check_enough(frame: Frame) -> None:
    if len(frame.member_ids) < 2 or len(frame.item_ids) < 2:
        raise NotEnoughData(
            f"{len(frame)} interactions of {len(frame.member_ids)} members on "
            f"{len(frame.item_ids)} items; need at least 2 members and 2 items"
        )


def _scaled(values: np.ndarray) -> np.ndarray:
    return values / max(float(values.max(initial=0.0)), 1e-12)


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(float(seconds), UTC).isoformat(timespec="seconds")


def _settings_record(settings: RetrievalSettings) -> dict[str, Any]:
    return settings.model_dump(mode="json", exclude={"database_url"})
