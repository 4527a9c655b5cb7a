"""The learned ranker: LightGBM lambdarank over the features of services/ranking/features.py.

Training replays the native events in time order through a fresh `ItemFeatureState` and a
replay of the members' profiles (the profiles service's own code), and asks for each
training group the features as of just before it, through the same `feature_matrix`
serving calls: what the model learns from is what it will be shown.

Groups come from one of two places:

* **impressions** (what the fleet showed, with outcomes): an `impression` event lists the
  items shown in order; a later `click`, `add_to_cart` or `purchase` with the same
  `recommendation_id` within OUTCOME_WINDOW_S labels the item. The impression's context
  may say what retrieval answered (`placement`; `scores` and `sources` by item id), which
  then fills those features; otherwise they are missing.
* **interactions** (when too few impressions have outcomes): every purchase, add to cart
  or click of a member at an instant is a group of the items concerned plus `negatives`
  items drawn from those known by then, half by recent popularity and half uniformly
  (drawn by popularity alone, the negatives would be more popular than what members buy in a
  shop where popularity means nothing, and the model would learn that artefact). No
  retrieval answered these, so the retrieval score, sources and position are missing:
  the model learns from the shop's and the member's side only, and the artifact says so.

Labels are graded: purchase 3, add to cart 2, click 1, else 0. The latest
`validation_share` of the groups (by time) stops the boosting early and measures NDCG@10
of the model against the order the groups came in (retrieval's for impressions, this
week's popularity for interactions).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from services.common.candidates import SOURCE_REASONS, CandidateLike
from services.common.clock import Clock
from services.common.events import AnyEvent, EventType
from services.profiles.domain import MemberProfile, apply_event, new_profile
from services.profiles.portrait import affinities, lifecycle, price_profile
from services.profiles.scoring import MIN_PRICES, ScoreSchedule, Scoring, compute, rfm_scores
from services.profiles.settings import ProfilesSettings
from services.ranking.features import (
    COLUMN,
    DAY_S,
    ENGAGEMENT,
    FEATURE_NAMES,
    ItemFeatureState,
    feature_matrix,
    member_price_percentile,
)
from services.ranking.rankers import MemberContext, RankedItem, Ranker

if TYPE_CHECKING:
    # Imported when a model is loaded or trained: it takes a second and more (it brings
    # scikit-learn and pandas) and needs the system's OpenMP runtime (libgomp1), which a
    # service that never serves this ranker should not depend on.
    import lightgbm as lgb

ARTIFACT_FORMAT = "ltr-1"
MODEL_FILE = "model.txt"
META_FILE = "meta.json"
STATE_FILE = "state.bin"
LABELS = {EventType.PURCHASE: 3, EventType.ADD_TO_CART: 2, EventType.CLICK: 1}
NDCG_AT = 10
OUTCOME_WINDOW_S = DAY_S  # an outcome counts for the impression it names within a day
POPULAR_NEGATIVES = 0.5  # share of negatives drawn by popularity, the rest uniformly
RING = 100_000  # engaged lines the popularity draw picks from (the latest)
MAX_REASONS = 3
RESCORE_S = 7 * DAY_S


class NotEnoughData(RuntimeError):
    """Too few training groups to learn a ranking from."""


# --------------------------------------------------------------------------- serving


class LtrRanker(Ranker):
    """Candidates scored by a LightGBM ranking model, one prediction per request."""

    name = "ltr"

    def __init__(
        self,
        booster: lgb.Booster,
        meta: Mapping[str, Any],
        state: ItemFeatureState,
        clock: Clock | None = None,
    ) -> None:
        check_features(meta.get("feature_names"), "meta.json")
        check_features(booster.feature_name(), "the model")
        self._booster = booster
        self.meta = dict(meta)
        self.state = state
        self._clock = clock or Clock()
        gains = booster.feature_importance("gain")
        # The features that can give a reason, the ones the model leans on most first;
        # those it never split on give none.
        self._reasons = sorted(
            (name for name in _REASON_FEATURES if gains[COLUMN[name]] > 0),
            key=lambda name: -gains[COLUMN[name]],
        )

    @classmethod
    def load(
        cls, path: Path, state: ItemFeatureState | None = None, clock: Clock | None = None
    ) -> LtrRanker:
        """The ranker of the artifact folder `path`; without `state`, the items' state the
        artifact carries from training (a fresh one if it carries none)."""
        meta = json.loads((path / META_FILE).read_text())
        if meta.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"{path} is not an ltr artifact of format {ARTIFACT_FORMAT}")
        check_features(meta.get("feature_names"), f"{path / META_FILE}")
        import lightgbm as lgb

        booster = lgb.Booster(model_file=str(path / MODEL_FILE))
        if state is None:
            carried = path / STATE_FILE
            state = (
                ItemFeatureState.restore(carried.read_bytes())
                if carried.exists()
                else ItemFeatureState()
            )
        return cls(booster, meta, state, clock)

    def scores(
        self,
        member: MemberContext,
        candidates: Sequence[CandidateLike],
        placement: str,
        recent_items: Sequence[str] = (),
        now: datetime | None = None,
    ) -> np.ndarray:
        """The model's score of each candidate (higher is better), in their order."""
        x = feature_matrix(
            member, candidates, placement, self.state, now or self._clock.now(), recent_items
        )
        return self._predict(x)

    def rank(
        self,
        member: MemberContext,
        candidates: Sequence[CandidateLike],
        placement: str,
        limit: int,
        recent_items: Sequence[str] | None = None,
    ) -> list[RankedItem]:
        """The best `limit` candidates (each item once), best first; equal scores keep
        retrieval's order. `recent_items`: the member's latest items, newest first (the
        profile's); read from `member.recent_items` when not given, if it has them."""
        if limit <= 0 or not candidates:
            return []
        if recent_items is None:
            recent_items = getattr(member, "recent_items", ()) or ()
        unique = _first_of_each(candidates)
        x = feature_matrix(member, unique, placement, self.state, self._clock.now(), recent_items)
        scores = self._predict(x)
        order = np.lexsort((np.arange(len(unique)), -scores))[:limit]
        said = _Said(member, x, len(self.state))
        ranked = []
        for row in order.tolist():
            candidate = unique[row]
            reasons = self._explain(x[row], candidate, said)
            ranked.append(
                RankedItem(
                    candidate.item_id, round(float(scores[row]), 6), reasons, candidate.category
                )
            )
        return ranked

    def _predict(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros(0)
        found = np.asarray(self._booster.predict(x, num_threads=1), dtype=np.float64)
        return np.nan_to_num(found, nan=0.0, posinf=0.0, neginf=0.0)

    def _explain(self, row: np.ndarray, candidate: CandidateLike, said: _Said) -> list[str]:
        found: list[str] = []
        for name in self._reasons:
            text = _REASON_FEATURES[name](row, candidate, said)
            if text and text not in found:
                found.append(text)
                if len(found) == MAX_REASONS:
                    break
        return found or ["picked for you"]


def check_features(names: Any, where: str) -> None:
    """ValueError naming the difference when `names` are not FEATURE_NAMES, in order."""
    if not isinstance(names, list | tuple):
        raise ValueError(f"{where} lists no feature names; this ranker needs {FEATURE_NAMES}")
    names = [str(n) for n in names]
    if names == list(FEATURE_NAMES):
        return
    missing = [n for n in FEATURE_NAMES if n not in names]
    unknown = [n for n in names if n not in FEATURE_NAMES]
    if missing or unknown:
        raise ValueError(
            f"{where} was trained on other features than this ranker computes: "
            f"missing {missing or 'none'}, unknown {unknown or 'none'}; retrain it"
        )
    moved = next(i for i, (a, b) in enumerate(zip(names, FEATURE_NAMES, strict=True)) if a != b)
    raise ValueError(
        f"{where} has this ranker's features in another order: feature {moved} is "
        f"'{names[moved]}' there and '{FEATURE_NAMES[moved]}' here; retrain it"
    )


def _first_of_each(candidates: Sequence[CandidateLike]) -> Sequence[CandidateLike]:
    ids = [c.item_id for c in candidates]
    if len(set(ids)) == len(ids):
        return candidates
    seen: set[str] = set()
    unique = []
    for item_id, candidate in zip(ids, candidates, strict=True):
        if item_id not in seen:
            seen.add(item_id)
            unique.append(candidate)
    return unique


class _Said:
    """What the reasons of one request compare each item with."""

    __slots__ = ("knows_price", "popular_week")

    def __init__(self, member: MemberContext, x: np.ndarray, items: int) -> None:
        week = x[:, COLUMN["popularity_7d"]]
        # Popular this week: in the request's top fifth by it, and with at least thrice an
        # average item's share of the shop's engagement.
        fifth = int(0.8 * (len(week) - 1))
        top = float(np.partition(week, fifth)[fifth])
        self.popular_week = max(top, 3.0 / max(items, 1), 1e-12)
        self.knows_price = member_price_percentile(member) is not None


Reason = Callable[[np.ndarray, CandidateLike, _Said], str | None]


def _value(row: np.ndarray, name: str) -> float:
    value = float(row[COLUMN[name]])
    return 0.0 if math.isnan(value) else value


def _source(source: str) -> Reason:
    def reason(row: np.ndarray, candidate: CandidateLike, said: _Said) -> str | None:
        return SOURCE_REASONS[source] if _value(row, f"source_{source}") > 0 else None

    return reason


# Per feature, the reason a shop can show when it speaks for the item (blend's wording).
_REASON_FEATURES: dict[str, Reason] = {
    "popularity_7d": lambda row, c, said: (
        "popular this week" if _value(row, "popularity_7d") >= said.popular_week else None
    ),
    "popularity_trend": lambda row, c, said: (
        "trending in the shop"
        if _value(row, "popularity_trend") >= 1.5 and _value(row, "popularity_1d") > 0
        else None
    ),
    "category_affinity": lambda row, c, said: (
        f"you like {c.category}" if c.category and _value(row, "category_affinity") >= 0.2 else None
    ),
    "co_bought": lambda row, c, said: (
        "bought with items you viewed" if _value(row, "co_bought") >= 0.05 else None
    ),
    "co_viewed": lambda row, c, said: (
        "viewed with items you looked at" if _value(row, "co_viewed") >= 0.05 else None
    ),
    "recently_seen": lambda row, c, said: (
        "you looked at this recently" if _value(row, "recently_seen") > 0 else None
    ),
    "item_age_days": lambda row, c, said: (
        "new in the shop"
        if _value(row, "item_age_days") < 14 and _value(row, "popularity_30d") > 0
        else None
    ),
    "price_fit": lambda row, c, said: (
        "in your usual price range"
        if said.knows_price and _value(row, "price_fit") >= 0.85
        else None
    ),
    "source_als": lambda row, c, said: (
        "bought by members with similar taste" if _value(row, "source_als") > 0 else None
    ),
    "source_buy_again": _source("buy_again"),
    "source_bought_together": _source("bought_together"),
    "source_similar": _source("similar"),
    "source_content": _source("content"),
    "source_trending": _source("trending"),
}


# --------------------------------------------------------------------------- training


@dataclass(frozen=True, slots=True)
class Shown:
    """A candidate of a training group, as retrieval would have sent it: score and
    sources unknown (NaN and None) unless an impression said them."""

    item_id: str
    score: float = math.nan
    popularity: float = 0.0
    category: str = ""
    source: str = ""
    sources: Mapping[str, float] | None = None


@dataclass
class Group:
    """One ranking the model learns from: who, when, where, the candidates in the order
    they came, their features as of just before `at` and their graded outcomes."""

    at: datetime
    member: MemberContext
    recent: tuple[str, ...]
    placement: str
    candidates: list[Shown]
    positions: list[float]
    features: np.ndarray
    labels: np.ndarray
    recommendation_id: str = ""


@dataclass
class Replay:
    """What a replay of the events yields: both kinds of groups and the state at the end."""

    interactions: list[Group]
    impressions: list[Group]
    state: ItemFeatureState
    events: int = 0
    late_events: int = 0
    first: datetime | None = None
    last: datetime | None = None


class MemberReplay:
    """The members' profiles rebuilt from the events by the profiles service's own code,
    read as the ranking request's MemberContext at any instant of the replay.

    RFM boundaries and category price distributions are recomputed on the profiles
    service's schedule, but at least RESCORE_S of event time apart (boundaries move
    slowly; a replay of a year rescoring daily spent a fifth of its time there), from the
    replayed members and the items' prices.
    """

    def __init__(self, settings: ProfilesSettings) -> None:
        self._settings = settings
        self._half_life_s = settings.affinity_half_life_days * DAY_S
        self._profiles: dict[str, MemberProfile] = {}
        self._orders: set[tuple[str, str]] = set()
        self._orders_since = 0
        self._scoring: Scoring | None = None
        self._schedule = ScoreSchedule(
            max(settings.scores_interval_s, RESCORE_S), settings.scores_stale_share
        )

    def apply(self, event: AnyEvent, state: ItemFeatureState) -> None:
        profile = self._profiles.get(event.member_id)
        if profile is None:
            profile = self._profiles[event.member_id] = new_profile(event)
        lines = event.lines()
        categories = {
            line.item_id: state.category(line.item_id) for line in lines if not line.category
        }
        new_order = False
        if event.type == EventType.PURCHASE:
            key = (event.member_id, event.order_id or f"event:{event.event_id}")
            new_order = key not in self._orders
            if new_order:
                self._orders.add(key)
                self._orders_since += 1
        apply_event(
            profile,
            event,
            item_categories={k: v for k, v in categories.items() if v},
            weights=self._settings.category_weights,
            new_order=new_order,
            keep_recent=self._settings.recent_items,
            half_life_s=self._half_life_s,
        )

    def context(
        self, member_id: str, now: datetime, state: ItemFeatureState
    ) -> tuple[MemberContext, tuple[str, ...]]:
        """The member as a ranking request would describe them at `now`, and their recent
        items (newest first, each once)."""
        if self._schedule.due(self._scoring, now, self._orders_since):
            self._rescore(now, state)
        profile = self._profiles.get(member_id)
        if profile is None:
            return MemberContext(member_id), ()
        recency = None
        if profile.last_order_at is not None:
            recency = max((now - profile.last_order_at).total_seconds(), 0.0) / DAY_S
        scores = rfm_scores(self._scoring, recency, profile.orders, profile.spend)
        price = price_profile(profile, self._scoring)
        member = MemberContext(
            member_id=member_id,
            category_weights=profile.category_weights(),
            orders=profile.orders,
            r_score=scores.r if scores else 0,
            f_score=scores.f if scores else 0,
            m_score=scores.m if scores else 0,
            price_band=price.band or "",
            price_percentile=price.percentile,
            affinities={a.category: a.share for a in affinities(profile, now, self._half_life_s)},
            lifecycle=lifecycle(profile, scores, now, self._settings.lifecycle),
        )
        return member, tuple(dict.fromkeys(r.item_id for r in profile.recent))

    def _rescore(self, now: datetime, state: ItemFeatureState) -> None:
        window = self._settings.scoring_window_days
        catalog = state.prices_by_category()
        population = []
        paid: dict[str, list[float]] = {}
        for profile in self._profiles.values():
            if profile.orders and profile.last_order_at is not None:
                days = max((now - profile.last_order_at).total_seconds(), 0.0) / DAY_S
                if days <= window:
                    population.append((days, profile.orders, profile.spend))
            for name, stat in profile.categories.items():
                # Paid prices stand in only where the items' prices are too few.
                if stat.paid_units and len(catalog.get(name, ())) < MIN_PRICES:
                    paid.setdefault(name, []).append(stat.paid_amount / stat.paid_units)
        self._scoring = compute(
            computed_at=now,
            window_days=window,
            population=population,
            catalog_prices=catalog,
            paid_prices=paid,
        )
        self._orders_since = 0


class _Negatives:
    """Items to show a member as not chosen: known by then, drawn half by recent
    popularity (from the latest RING engaged lines) and half uniformly."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._known: list[str] = []
        self._known_set: set[str] = set()
        self._ring: list[str] = []
        self._next = 0

    def add(self, event: AnyEvent) -> None:
        engaged = ENGAGEMENT.get(event.type.value, 0.0) > 0
        for line in event.lines():
            if line.item_id not in self._known_set:
                self._known_set.add(line.item_id)
                self._known.append(line.item_id)
            if engaged:
                if len(self._ring) < RING:
                    self._ring.append(line.item_id)
                else:
                    self._ring[self._next] = line.item_id
                    self._next = (self._next + 1) % RING

    def draw(self, count: int, exclude: Mapping[str, int]) -> list[str]:
        if not self._known or count <= 0:
            return []
        tries = 4 * count
        popular = self._rng.random(tries) < POPULAR_NEGATIVES
        ring = self._rng.integers(0, max(len(self._ring), 1), tries)
        known = self._rng.integers(0, len(self._known), tries)
        drawn: dict[str, None] = {}
        for k in range(tries):
            item = self._ring[ring[k]] if popular[k] and self._ring else self._known[known[k]]
            if item not in exclude:
                drawn[item] = None
                if len(drawn) == count:
                    break
        return list(drawn)


class _Reservoir:
    """At most `size` groups, a uniform sample of those offered (all while they fit)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self._size, self._rng = size, rng
        self.kept: list[Group] = []
        self.offered = 0

    def offer(self, group: Group) -> None:
        self.offered += 1
        if len(self.kept) < self._size:
            self.kept.append(group)
            return
        slot = int(self._rng.integers(0, self.offered))
        if slot < self._size:
            self.kept[slot] = group


@dataclass
class _Impression:
    group: Group
    rows: dict[str, int] = field(default_factory=dict)


def replay(
    events: Iterable[AnyEvent],
    *,
    now: datetime,
    negatives: int = 20,
    seed: int = 0,
    max_groups: int = 200_000,
    profiles: ProfilesSettings | None = None,
) -> Replay:
    """Replay `events` (oldest first; events after `now` are left out) and build the
    training groups of both kinds, each with its features as of just before it.

    Events of one instant are applied together, after the groups of that instant were
    built; an event older than the instant before it (out of order) joins the current one
    and is counted in `late_events`.
    """
    rng = np.random.default_rng(seed)
    state = ItemFeatureState()
    members = MemberReplay(profiles or ProfilesSettings())
    pool = _Negatives(rng)
    from_interactions = _Reservoir(max_groups, rng)
    from_impressions = _Reservoir(max_groups, rng)
    open_impressions: dict[str, _Impression] = {}
    result = Replay([], [], state)

    def close(opened: _Impression) -> None:
        if opened.group.labels.max(initial=0) > 0:
            from_impressions.offer(opened.group)

    def close_impressions(before: float) -> None:
        # Opened in time order, so the oldest are first.
        while open_impressions:
            oldest = next(iter(open_impressions.values()))
            if oldest.group.at.timestamp() >= before:
                break
            close(open_impressions.pop(oldest.group.recommendation_id))

    def flush(batch: list[AnyEvent], at: datetime) -> None:
        close_impressions(at.timestamp() - OUTCOME_WINDOW_S)
        wanted: dict[str, dict[str, int]] = {}
        for event in batch:
            grade = LABELS.get(event.type, 0)
            if grade:
                chosen = wanted.setdefault(event.member_id, {})
                for line in event.lines():
                    chosen[line.item_id] = max(chosen.get(line.item_id, 0), grade)
        for member_id, chosen in wanted.items():
            group = _interaction_group(member_id, chosen, at, state, members, pool, negatives, rng)
            if group is not None:
                from_interactions.offer(group)
        for event in batch:
            if event.type == EventType.IMPRESSION and event.recommendation_id:
                shown = _impression_group(event, at, state, members)
                if shown is not None:
                    # Shown again under the same id: the earlier showing is over.
                    earlier = open_impressions.pop(event.recommendation_id, None)
                    if earlier is not None:
                        close(earlier)
                    open_impressions[event.recommendation_id] = shown
        for event in batch:
            grade = LABELS.get(event.type, 0)
            opened = open_impressions.get(event.recommendation_id or "")
            if grade and opened is not None:
                for line in event.lines():
                    row = opened.rows.get(line.item_id)
                    if row is not None:
                        opened.group.labels[row] = max(opened.group.labels[row], grade)
        for event in batch:
            state.apply([event])
            members.apply(event, state)
            pool.add(event)

    batch: list[AnyEvent] = []
    batch_at: datetime | None = None
    batch_ids: set[str] = set()
    for event in events:
        if event.timestamp > now:
            continue
        if event.event_id in batch_ids or state.has_seen(event.event_id):
            continue
        result.events += 1
        result.first = min(result.first or event.timestamp, event.timestamp)
        result.last = max(result.last or event.timestamp, event.timestamp)
        if batch_at is not None and event.timestamp > batch_at:
            flush(batch, batch_at)
            batch, batch_ids = [], set()
        if batch_at is not None and event.timestamp < batch_at:
            result.late_events += 1
        else:
            batch_at = event.timestamp
        batch.append(event)
        batch_ids.add(event.event_id)
    if batch and batch_at is not None:
        flush(batch, batch_at)
    close_impressions(math.inf)
    result.interactions = sorted(from_interactions.kept, key=lambda g: g.at)
    result.impressions = sorted(from_impressions.kept, key=lambda g: g.at)
    return result


def _interaction_group(
    member_id: str,
    chosen: dict[str, int],
    at: datetime,
    state: ItemFeatureState,
    members: MemberReplay,
    pool: _Negatives,
    negatives: int,
    rng: np.random.Generator,
) -> Group | None:
    # Items nobody had met before cannot be negatives, so they are no positives either
    # (else "never seen" would be learnt as "will be bought").
    known = {item_id: grade for item_id, grade in chosen.items() if item_id in state}
    if not known:
        return None
    drawn = pool.draw(negatives, known)
    if not drawn:
        return None
    member, recent = members.context(member_id, at, state)
    items = list(known) + drawn
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    candidates = [Shown(item_id, category=state.category(item_id)) for item_id in items]
    positions = [math.nan] * len(items)
    x = feature_matrix(member, candidates, "", state, at, recent, positions)
    labels = np.array([known.get(i, 0) for i in items], dtype=np.float64)
    return Group(at, member, recent, "", candidates, positions, x, labels)


def _impression_group(
    event: AnyEvent, at: datetime, state: ItemFeatureState, members: MemberReplay
) -> _Impression | None:
    context = event.context or {}
    scores = _object(context.get("scores"))
    sources = _object(context.get("sources"))
    said = context.get("placement")
    placement = said if isinstance(said, str) else ""
    candidates: list[Shown] = []
    rows: dict[str, int] = {}
    for line in event.lines():
        if line.item_id in rows:
            continue
        rows[line.item_id] = len(candidates)
        score, found = scores.get(line.item_id), sources.get(line.item_id)
        candidates.append(
            Shown(
                line.item_id,
                score=float(score) if isinstance(score, int | float) else math.nan,
                category=line.category or state.category(line.item_id),
                sources=(
                    {str(s): float(p) for s, p in found.items() if isinstance(p, int | float)}
                    if isinstance(found, dict)
                    else None
                ),
            )
        )
    if len(candidates) < 2:
        return None
    member, recent = members.context(event.member_id, at, state)
    positions = [float(p) for p in range(len(candidates))]
    x = feature_matrix(member, candidates, placement, state, at, recent, positions)
    labels = np.zeros(len(candidates))
    group = Group(
        at,
        member,
        recent,
        placement,
        candidates,
        positions,
        x,
        labels,
        event.recommendation_id or "",
    )
    return _Impression(group, rows)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def train_ltr(
    events: Iterable[AnyEvent],
    out_dir: Path,
    *,
    now: datetime,
    negatives: int = 20,
    seed: int = 0,
    trees: int = 200,
    num_leaves: int = 31,
    learning_rate: float = 0.05,
    min_data_in_leaf: int = 20,
    validation_share: float = 0.2,
    early_stopping_rounds: int = 20,
    min_impression_groups: int = 50,
    max_groups: int = 200_000,
    num_threads: int = 2,
    profiles: ProfilesSettings | None = None,
) -> dict[str, Any]:
    """Train a ranker from `events` (oldest first) and write it to `out_dir` (the model,
    meta.json and the items' state at the end); returns the meta.

    Impression groups with outcomes are used when there are at least
    `min_impression_groups` of them, else interaction groups (`trained_from` says which).
    Raises NotEnoughData below 10 groups.
    """
    import lightgbm as lgb

    started = time.perf_counter()
    settings = {
        "negatives": negatives,
        "seed": seed,
        "trees": trees,
        "num_leaves": num_leaves,
        "learning_rate": learning_rate,
        "min_data_in_leaf": min_data_in_leaf,
        "validation_share": validation_share,
        "early_stopping_rounds": early_stopping_rounds,
        "min_impression_groups": min_impression_groups,
        "max_groups": max_groups,
        "outcome_window_s": OUTCOME_WINDOW_S,
        "popular_negatives": POPULAR_NEGATIVES,
    }
    replayed = replay(
        events, now=now, negatives=negatives, seed=seed, max_groups=max_groups, profiles=profiles
    )
    replayed_s = time.perf_counter() - started
    trained_from = (
        "impressions" if len(replayed.impressions) >= min_impression_groups else "interactions"
    )
    groups = replayed.impressions if trained_from == "impressions" else replayed.interactions
    if len(groups) < 10:
        raise NotEnoughData(
            f"{len(groups)} training groups from {replayed.events} events "
            f"({len(replayed.impressions)} impressions with outcomes); need at least 10"
        )
    cut = min(max(int(len(groups) * (1 - validation_share)), 1), len(groups) - 1)
    training, validation = groups[:cut], groups[cut:]
    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [NDCG_AT],
        "num_leaves": num_leaves,
        "learning_rate": learning_rate,
        "min_data_in_leaf": min_data_in_leaf,
        "num_threads": num_threads,
        "seed": seed,
        "deterministic": True,
        "force_row_wise": True,
        "feature_pre_filter": False,
        "verbosity": -1,
    }
    train_set = _dataset(training)
    valid_set = _dataset(validation, reference=train_set)
    booster = lgb.train(
        params,
        train_set,
        num_boost_round=trees,
        valid_sets=[valid_set],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    baseline_kind = _baseline_kind(trained_from, validation)
    predicted = np.asarray(
        booster.predict(np.vstack([g.features for g in validation]), num_iteration=best)
    )
    bounds = np.cumsum([len(g.candidates) for g in validation])[:-1]
    ltr_ndcg, base_ndcg = [], []
    for group, scores in zip(validation, np.split(predicted, bounds), strict=True):
        ltr_ndcg.append(ndcg(scores, group.labels))
        base_ndcg.append(ndcg(_baseline(group, baseline_kind), group.labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(out_dir / MODEL_FILE), num_iteration=best)
    (out_dir / STATE_FILE).write_bytes(replayed.state.snapshot())
    gains = booster.feature_importance("gain", iteration=best)
    ltr_mean, base_mean = float(np.mean(ltr_ndcg)), float(np.mean(base_ndcg))
    meta: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "ranker": "ltr",
        "feature_names": list(FEATURE_NAMES),
        "trained_from": trained_from,
        "trained_at": now.astimezone(UTC).isoformat(timespec="seconds"),
        "data_window": {
            "first": _iso(replayed.first),
            "last": _iso(replayed.last),
            "validation_from": _iso(validation[0].at),
        },
        "events": replayed.events,
        "late_events": replayed.late_events,
        "groups": {
            "training": len(training),
            "validation": len(validation),
            "impressions_with_outcomes": len(replayed.impressions),
            "interactions": len(replayed.interactions),
        },
        "candidates": int(sum(len(g.candidates) for g in groups)),
        "items_known": len(replayed.state),
        "settings": settings,
        "lightgbm": {"version": lgb.__version__, "params": params, "best_iteration": best},
        "metrics": {
            f"validation_ndcg@{NDCG_AT}": {
                "ltr": round(ltr_mean, 4),
                "baseline": round(base_mean, 4),
                "gain": round(ltr_mean - base_mean, 4),
            },
            "baseline": baseline_kind,
            "validation_groups": len(validation),
        },
        "feature_importance": {
            name: round(float(g), 3) for name, g in zip(FEATURE_NAMES, gains, strict=True)
        },
        # Features the groups could not know (missing in every row): the model never uses
        # them, whatever serving sends.
        "unseen_features": [
            name
            for k, name in enumerate(FEATURE_NAMES)
            if all(np.isnan(g.features[:, k]).all() for g in groups)
        ],
        # The items' state carries item figures only: no member ids.
        "holds_member_data": False,
        "training_seconds": round(time.perf_counter() - started, 2),
        "replay_seconds": round(replayed_s, 2),
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def _dataset(groups: Sequence[Group], reference: lgb.Dataset | None = None) -> lgb.Dataset:
    import lightgbm as lgb

    return lgb.Dataset(
        np.vstack([g.features for g in groups]),
        label=np.concatenate([g.labels for g in groups]),
        group=[len(g.candidates) for g in groups],
        feature_name=list(FEATURE_NAMES),
        reference=reference,
        free_raw_data=True,
    )


def _baseline_kind(trained_from: str, groups: Sequence[Group]) -> str:
    if trained_from == "interactions":
        return "popularity_7d"
    scored = any(not np.isnan(g.features[:, COLUMN["retrieval_score"]]).all() for g in groups)
    return "retrieval_score" if scored else "shown_order"


def _baseline(group: Group, kind: str) -> np.ndarray:
    """Scores ranking the group as its baseline would (higher first)."""
    if kind == "popularity_7d":
        return group.features[:, COLUMN["popularity_7d"]]
    shown = -np.asarray(group.positions, dtype=np.float64)
    if kind == "shown_order":
        return shown
    score = np.nan_to_num(group.features[:, COLUMN["retrieval_score"]], nan=-np.inf)
    # By score, equal scores in the order shown.
    order = np.lexsort((-shown, -score))
    ranks = np.empty(len(order))
    ranks[order] = -np.arange(len(order))
    return ranks


def ndcg(scores: np.ndarray, labels: np.ndarray, at: int = NDCG_AT) -> float:
    """NDCG@at of ranking by `scores` (ties in the order given) with gains 2^label - 1;
    1.0 for a group with no positive label."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores)))[:at]
    discounts = 1.0 / np.log2(np.arange(2, at + 2))
    gains = 2.0 ** np.asarray(labels, dtype=np.float64) - 1.0
    found = float((gains[order] * discounts[: len(order)]).sum())
    ideal_gains = np.sort(gains)[::-1][:at]
    ideal = float((ideal_gains * discounts[: len(ideal_gains)]).sum())
    return found / ideal if ideal > 0 else 1.0


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat(timespec="seconds") if at else None
