"""What the learned ranker knows about a member, a candidate and the shop: one function for
training and serving alike.

`ItemFeatureState` is the shop side: per item, popularity over several windows (decayed
counts of the members' engagement, as a share of the shop's), the first time it was seen,
its price within its category, and which items it is bought and viewed with. It is fed
the native events in order (`apply`), by the ranking service's bus consumer when serving
and by the trainer's replay when training, so a feature means the same in both.
`feature_matrix` turns a request (member, candidates, placement) into the model's input.

Memory is bounded per item, not per event: a handful of counters, a price bin and at most
`MAX_NEIGHBOURS` companions per item. Baskets being filled and members' browsing sessions
are kept for the latest few thousand only, since they matter for minutes.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec
import numpy as np

from services.common.candidates import CandidateLike
from services.common.events import AnyEvent, EventType
from services.ranking.rankers import MemberContext

DAY_S = 86_400.0
# Mean lifetimes of the popularity counters, in days: today, this week, this month.
WINDOWS_DAYS = (1.0, 7.0, 30.0)
# What one line of an event says about an item's appeal (the profiles' category weights:
# a purchase says far more than a view; impressions and removals say nothing).
ENGAGEMENT: dict[str, float] = {
    "view": 1.0,
    "click": 1.0,
    "wishlist": 2.0,
    "add_to_cart": 3.0,
    "purchase": 5.0,
    "rate": 2.0,
}
BROWSING = frozenset({EventType.VIEW, EventType.CLICK, EventType.ADD_TO_CART})
SOURCES = ("als", "buy_again", "bought_together", "similar", "content", "trending")
PLACEMENTS = ("home", "product", "cart", "email")

# Companions kept per item; pruned back to this once twice as many have been met.
MAX_NEIGHBOURS = 32
# A companion's share is counted against its item's co-occurrences plus this many, so that
# one basket in common does not make two items inseparable.
CO_PRIOR = 5.0
# An item added to a basket pairs with the basket's latest BASKET_WINDOW items (so a
# 300-line order costs 3,000 pairs, not 45,000); this many baskets stay open.
BASKET_WINDOW = 10
OPEN_BASKETS = 10_000
# Browsing: an item viewed pairs with the member's latest SESSION_ITEMS items viewed within
# SESSION_GAP_S before it; the sessions of this many members are kept.
SESSION_ITEMS = 5
SESSION_GAP_S = 3_600.0
OPEN_SESSIONS = 50_000
# Event ids remembered, so that a redelivered batch changes nothing.
SEEN_EVENTS = 100_000
# The recent items of a member read for co-signals (the profile keeps 20 by default).
MAX_RECENT = 20

# Prices are binned on a log scale, 12 bins a decade from 0.01 to 10^6: an item's place in
# its category is its bin's place among the category's items (bins 21% wide).
PRICE_BINS = 96
_LOG_LOW, _BINS_PER_DECADE = -2.0, 12.0
MIN_PRICED = 5  # items of a category with a price before its price distribution means anything
BAND_PERCENTILE = {"low": 1 / 6, "mid": 0.5, "high": 5 / 6}
NEUTRAL_FIT = 0.5

FEATURE_NAMES: tuple[str, ...] = (
    "retrieval_score",
    "retrieval_position",
    *(f"source_{s}" for s in SOURCES),
    "popularity_1d",
    "popularity_7d",
    "popularity_30d",
    "popularity_trend",
    "item_age_days",
    "category_affinity",
    "price_fit",
    "item_price_percentile",
    "co_bought",
    "co_viewed",
    "recently_seen",
    "r_score",
    "f_score",
    "m_score",
    *(f"placement_{p}" for p in PLACEMENTS),
)
COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}
_SOURCE_OFFSET = {s: k for k, s in enumerate(SOURCES)}
_SOURCE_COLUMNS = slice(COLUMN["source_als"], COLUMN["source_als"] + len(SOURCES))
_PLACEMENT_COLUMN = {p: COLUMN[f"placement_{p}"] for p in PLACEMENTS}
_POP = [COLUMN["popularity_1d"], COLUMN["popularity_7d"], COLUMN["popularity_30d"]]

# Columns of the per-item numbers: the decayed counts of each window, the instant they are
# decayed to, when the item was first seen, its latest price.
_COUNTS = slice(0, len(WINDOWS_DAYS))
_REF, _FIRST, _PRICE = len(WINDOWS_DAYS), len(WINDOWS_DAYS) + 1, len(WINDOWS_DAYS) + 2
_NUMBERS = len(WINDOWS_DAYS) + 3
_TAU_S = tuple(days * DAY_S for days in WINDOWS_DAYS)
SNAPSHOT_FORMAT = 1


class ItemFeatureState:
    """The shop's items as the learned ranker sees them, kept from the native events.

    `apply` is cheap per event (a few counter updates per line) and safe to call from a bus
    consumer's thread while requests read: both take one lock, per event on the writing side.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        self._numbers = np.zeros((64, _NUMBERS))
        self._category = np.full(64, -1, dtype=np.int64)
        self._price_bin = np.full(64, -1, dtype=np.int64)
        self._categories: dict[str, int] = {}
        self._category_names: list[str] = []
        self._histogram = np.zeros((8, PRICE_BINS), dtype=np.int64)
        # The shop's decayed counts per window and the instant they are decayed to.
        self._shop = [0.0] * len(WINDOWS_DAYS)
        self._shop_ref: float | None = None
        self._neighbours: tuple[dict[int, dict[int, float]], dict[int, dict[int, float]]] = (
            {},
            {},
        )
        self._co_totals: tuple[dict[int, float], dict[int, float]] = ({}, {})
        self._baskets: OrderedDict[str, list[int]] = OrderedDict()
        self._sessions: OrderedDict[str, list[tuple[int, float]]] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.latest: datetime | None = None

    # ------------------------------------------------------------------ feeding

    def apply(self, events: Iterable[AnyEvent]) -> int:
        """Fold events in, in the order given; an event id met among the latest
        SEEN_EVENTS is skipped. Returns how many were new."""
        applied = 0
        for event in events:
            with self._lock:
                if event.event_id in self._seen:
                    continue
                self._seen[event.event_id] = None
                if len(self._seen) > SEEN_EVENTS:
                    self._seen.popitem(last=False)
                self._apply_one(event)
            applied += 1
        return applied

    def _apply_one(self, event: AnyEvent) -> None:
        at = event.timestamp.timestamp()
        if self.latest is None or event.timestamp > self.latest:
            self.latest = event.timestamp
        weight = ENGAGEMENT.get(event.type.value, 0.0)
        positions = []
        for line in event.lines():
            i = self._item(line.item_id, at)
            if line.category:
                self._set_category(i, line.category)
            if line.price is not None and line.price > 0:
                self._set_price(i, line.price)
            if weight:
                self._count(i, weight, at)
            positions.append(i)
        if event.type == EventType.PURCHASE:
            self._fill_basket(event.order_id or f"event:{event.event_id}", positions)
        elif event.type in BROWSING:
            self._browse(event.member_id, positions, at)

    def _item(self, item_id: str, at: float) -> int:
        i = self._index.get(item_id)
        if i is None:
            i = len(self._ids)
            if i == len(self._numbers):
                self._grow()
            self._index[item_id] = i
            self._ids.append(item_id)
            self._numbers[i, _REF] = at
            self._numbers[i, _FIRST] = at
        elif at < self._numbers[i, _FIRST]:
            self._numbers[i, _FIRST] = at
        return i

    def _grow(self) -> None:
        size = len(self._numbers) * 2
        numbers = np.zeros((size, _NUMBERS))
        numbers[: len(self._numbers)] = self._numbers
        category = np.full(size, -1, dtype=np.int64)
        category[: len(self._category)] = self._category
        price_bin = np.full(size, -1, dtype=np.int64)
        price_bin[: len(self._price_bin)] = self._price_bin
        self._numbers, self._category, self._price_bin = numbers, category, price_bin

    def _set_category(self, i: int, name: str) -> None:
        c = self._categories.get(name)
        if c is None:
            c = len(self._category_names)
            self._categories[name] = c
            self._category_names.append(name)
            if c == len(self._histogram):
                grown = np.zeros((c * 2, PRICE_BINS), dtype=np.int64)
                grown[:c] = self._histogram
                self._histogram = grown
        old = int(self._category[i])
        if old == c:
            return
        b = int(self._price_bin[i])
        if b >= 0:
            if old >= 0:
                self._histogram[old, b] -= 1
            self._histogram[c, b] += 1
        self._category[i] = c

    def _set_price(self, i: int, price: float) -> None:
        self._numbers[i, _PRICE] = price
        b = price_bin(price)
        old = int(self._price_bin[i])
        if old == b:
            return
        c = int(self._category[i])
        if c >= 0:
            if old >= 0:
                self._histogram[c, old] -= 1
            self._histogram[c, b] += 1
        self._price_bin[i] = b

    def _count(self, i: int, weight: float, at: float) -> None:
        row = self._numbers[i]
        ref = float(row[_REF])
        counts = [float(v) for v in row[_COUNTS]]
        row[_COUNTS] = _decayed_add(counts, ref, weight, at)
        row[_REF] = max(ref, at)
        if self._shop_ref is None:
            self._shop, self._shop_ref = [weight] * len(WINDOWS_DAYS), at
        else:
            self._shop = _decayed_add(self._shop, self._shop_ref, weight, at)
            self._shop_ref = max(self._shop_ref, at)

    def _fill_basket(self, key: str, positions: list[int]) -> None:
        basket = self._baskets.get(key)
        if basket is None:
            basket = self._baskets[key] = []
            if len(self._baskets) > OPEN_BASKETS:
                self._baskets.popitem(last=False)
        else:
            self._baskets.move_to_end(key)
        for i in positions:
            if i in basket:
                continue
            self._link(0, i, basket)
            basket.append(i)
            if len(basket) > BASKET_WINDOW:
                del basket[0]

    def _browse(self, member_id: str, positions: list[int], at: float) -> None:
        session = self._sessions.get(member_id)
        if session is None:
            session = self._sessions[member_id] = []
            if len(self._sessions) > OPEN_SESSIONS:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(member_id)
        for i in positions:
            kept = [(j, t) for j, t in session if j != i]
            self._link(1, i, [j for j, t in kept if abs(at - t) <= SESSION_GAP_S])
            session[:] = kept[-(SESSION_ITEMS - 1) :]
            session.append((i, at))

    def _link(self, kind: int, i: int, partners: list[int]) -> None:
        """Count one co-occurrence of `i` with each of `partners` (none of them `i`)."""
        if not partners:
            return
        neighbours, totals = self._neighbours[kind], self._co_totals[kind]
        mine = neighbours.get(i)
        if mine is None:
            mine = neighbours[i] = {}
        for j in partners:
            mine[j] = mine.get(j, 0.0) + 1.0
            theirs = neighbours.get(j)
            if theirs is None:
                theirs = neighbours[j] = {}
            theirs[i] = theirs.get(i, 0.0) + 1.0
            totals[j] = totals.get(j, 0.0) + 1.0
            if len(theirs) > 2 * MAX_NEIGHBOURS:
                neighbours[j] = _strongest(theirs)
        totals[i] = totals.get(i, 0.0) + len(partners)
        if len(mine) > 2 * MAX_NEIGHBOURS:
            neighbours[i] = _strongest(mine)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    @property
    def item_ids(self) -> list[str]:
        """Every item seen, in the order first seen."""
        return list(self._ids)

    def has_seen(self, event_id: str) -> bool:
        """Whether the event is among the latest SEEN_EVENTS applied."""
        return event_id in self._seen

    def prices_by_category(self) -> dict[str, list[float]]:
        """Per category the latest prices of its items (as the profiles' price bands read
        the catalog's)."""
        found: dict[str, list[float]] = {}
        with self._lock:
            n = len(self._ids)
            priced = np.flatnonzero((self._category[:n] >= 0) & (self._price_bin[:n] >= 0))
            for i in priced.tolist():
                name = self._category_names[int(self._category[i])]
                found.setdefault(name, []).append(float(self._numbers[i, _PRICE]))
        return found

    def category(self, item_id: str) -> str:
        """The item's category as its latest event said, or ""."""
        i = self._index.get(item_id)
        c = -1 if i is None else int(self._category[i])
        return self._category_names[c] if c >= 0 else ""

    def popularity(self, item_id: str) -> tuple[float, ...]:
        """The item's share of the shop's engagement per window of WINDOWS_DAYS."""
        with self._lock:
            found = self._popularity(np.array([self._index.get(item_id, -1)]))
        return tuple(float(v) for v in found[0])

    def co_signal(self, item_id: str, recent_items: Sequence[str], kind: str = "bought") -> float:
        """How strongly the item goes with the member's recent items, 0..1: the largest
        share of a recent item's co-occurrences it holds (`kind`: "bought" in one
        order, "viewed" in one browsing session)."""
        i = self._index.get(item_id)
        if i is None:
            return 0.0
        with self._lock:
            return self._co_signals(0 if kind == "bought" else 1, recent_items, {i}).get(i, 0.0)

    def _co_signals(
        self, kind: int, recent_items: Sequence[str], wanted: set[int] | None = None
    ) -> dict[int, float]:
        """Per item (of `wanted`, or any) its largest share of a recent item's
        co-occurrences."""
        neighbours, totals = self._neighbours[kind], self._co_totals[kind]
        signals: dict[int, float] = {}
        for item_id in recent_items[:MAX_RECENT]:
            r = self._index.get(item_id)
            if r is None or not (companions := neighbours.get(r)):
                continue
            denominator = totals[r] + CO_PRIOR
            for j, count in companions.items():
                if wanted is not None and j not in wanted:
                    continue
                share = count / denominator
                if share > signals.get(j, 0.0):
                    signals[j] = share
        return signals

    def _popularity(self, index: np.ndarray) -> np.ndarray:
        """Per item position (-1: unknown) its share of the shop's engagement per window.

        Item and shop counts decay alike, so the share holds from one event to the next;
        it is computed with both decayed to the shop's latest instant, never to a later
        "now" (where a day-long window of an idle shop would underflow to 0/0).
        """
        found = np.zeros((len(index), len(WINDOWS_DAYS)))
        known = index >= 0
        if self._shop_ref is None or not known.any():
            return found
        rows = self._numbers[index[known]]
        lag = np.maximum(self._shop_ref - rows[:, _REF], 0.0)
        for k, tau in enumerate(_TAU_S):
            if self._shop[k] > 0:
                found[known, k] = rows[:, k] / self._shop[k] * np.exp(-lag / tau)
        return found

    def _price_percentiles(self, index: np.ndarray) -> np.ndarray:
        """Per item position its price's place among its category's items, 0..1 (NaN when
        unknown or the category has fewer than MIN_PRICED priced items)."""
        found = np.full(len(index), np.nan)
        safe = np.where(index >= 0, index, 0)
        bins = np.where(index >= 0, self._price_bin[safe], -1)
        categories = np.where(index >= 0, self._category[safe], -1)
        usable = (bins >= 0) & (categories >= 0)
        if not usable.any():
            return found
        histogram = self._histogram[categories[usable]]
        below = np.cumsum(histogram, axis=1)
        total = below[:, -1]
        picked = bins[usable]
        rows = np.arange(len(picked))
        at = histogram[rows, picked]
        percentile = (below[rows, picked] - at + 0.5 * at) / np.maximum(total, 1)
        found[usable] = np.where(total >= MIN_PRICED, percentile, np.nan)
        return found

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> bytes:
        """The state as bytes (msgpack): the items' figures, their companions and the
        latest event ids. Baskets being filled and browsing sessions are left out: they
        hold member ids and matter for minutes."""
        with self._lock:
            n = len(self._ids)
            record = {
                "format": SNAPSHOT_FORMAT,
                "ids": self._ids,
                "numbers": self._numbers[:n].tobytes(),
                "category": self._category[:n].tobytes(),
                "price_bin": self._price_bin[:n].tobytes(),
                "categories": self._category_names,
                "histogram": self._histogram[: len(self._category_names)].tobytes(),
                "shop": self._shop,
                "shop_ref": self._shop_ref,
                "neighbours": [
                    [[x, list(c.items())] for x, c in by_item.items()]
                    for by_item in self._neighbours
                ],
                "co_totals": [list(totals.items()) for totals in self._co_totals],
                "seen": list(self._seen),
                "latest": self.latest.isoformat() if self.latest else None,
            }
            return msgspec.msgpack.encode(record)

    @classmethod
    def restore(cls, raw: bytes) -> ItemFeatureState:
        """A state from `snapshot()`; ValueError when it is not one."""
        try:
            record: dict[str, Any] = msgspec.msgpack.decode(raw)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not an item feature state: {exc}") from None
        if not isinstance(record, dict) or record.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"item feature state of an unknown format (want {SNAPSHOT_FORMAT})")
        state = cls()
        ids = list(record["ids"])
        n = len(ids)
        capacity = max(64, 1 << max(n - 1, 0).bit_length())
        state._ids = ids
        state._index = {item_id: i for i, item_id in enumerate(ids)}
        state._numbers = np.zeros((capacity, _NUMBERS))
        state._numbers[:n] = np.frombuffer(record["numbers"]).reshape(n, _NUMBERS)
        state._category = np.full(capacity, -1, dtype=np.int64)
        state._category[:n] = np.frombuffer(record["category"], dtype=np.int64)
        state._price_bin = np.full(capacity, -1, dtype=np.int64)
        state._price_bin[:n] = np.frombuffer(record["price_bin"], dtype=np.int64)
        names = list(record["categories"])
        state._category_names = names
        state._categories = {name: c for c, name in enumerate(names)}
        histogram = np.frombuffer(record["histogram"], dtype=np.int64).reshape(-1, PRICE_BINS)
        state._histogram = np.zeros((max(8, 2 * len(names)), PRICE_BINS), dtype=np.int64)
        state._histogram[: len(names)] = histogram
        state._shop = [float(v) for v in record["shop"]]
        state._shop_ref = record["shop_ref"]
        bought, viewed = (
            {int(x): {int(j): float(v) for j, v in companions} for x, companions in by_item}
            for by_item in record["neighbours"]
        )
        state._neighbours = (bought, viewed)
        bought_totals, viewed_totals = (
            {int(x): float(v) for x, v in totals} for totals in record["co_totals"]
        )
        state._co_totals = (bought_totals, viewed_totals)
        state._seen = OrderedDict.fromkeys(record["seen"])
        latest = record.get("latest")
        state.latest = datetime.fromisoformat(latest) if latest else None
        return state


def _strongest(companions: dict[int, float]) -> dict[int, float]:
    """The MAX_NEIGHBOURS companions counted most (ties: the ones met first)."""
    kept = sorted(companions, key=companions.__getitem__, reverse=True)[:MAX_NEIGHBOURS]
    return {j: companions[j] for j in kept}


def price_bin(price: float) -> int:
    position = (math.log10(max(price, 1e-9)) - _LOG_LOW) * _BINS_PER_DECADE
    return min(max(int(position), 0), PRICE_BINS - 1)


def _decayed_add(counts: list[float], ref: float, weight: float, at: float) -> list[float]:
    """Counts decayed to `ref` with `weight` added at `at`, decayed to the later of them."""
    if at >= ref:
        return [
            c * math.exp(-(at - ref) / tau) + weight for c, tau in zip(counts, _TAU_S, strict=True)
        ]
    # A late event: its weight has decayed by the time of the latest one.
    return [c + weight * math.exp(-(ref - at) / tau) for c, tau in zip(counts, _TAU_S, strict=True)]


def member_price_percentile(member: MemberContext) -> float | None:
    """Where the member's paid prices sit within their categories, 0..1 (their band's
    middle when only the band is known), or None."""
    if member.price_percentile is not None:
        return member.price_percentile
    return BAND_PERCENTILE.get(member.price_band)


def feature_matrix(
    member: MemberContext,
    candidates: Sequence[CandidateLike],
    placement: str,
    state: ItemFeatureState,
    now: datetime,
    recent_items: Sequence[str] = (),
    positions: Sequence[float] | None = None,
) -> np.ndarray:
    """The model's input for a request, one row per candidate, columns as FEATURE_NAMES.

    `positions`: each candidate's retrieval rank, by default its place in `candidates`
    (NaN where unknown). A candidate whose score is NaN or that has no `sources` at all
    (as when training from interactions, where no retrieval answered) has those features
    missing, which the model reads as such, not as zero.
    """
    n = len(candidates)
    x = np.zeros((n, len(FEATURE_NAMES)))
    if n == 0:
        return x
    now_s = now.timestamp()
    # One pass over the candidates (attribute reads of protobuf messages are the cost).
    ids, scores, categories = [], [], []
    chances = [0.0] * (n * len(SOURCES))
    unsourced = []
    for row, candidate in enumerate(candidates):
        ids.append(candidate.item_id)
        scores.append(candidate.score)
        categories.append(candidate.category)
        found: Mapping[str, float] | None = getattr(candidate, "sources", None)
        if found is None:
            unsourced.append(row)
            continue
        base = row * len(SOURCES)
        for source in found:
            offset = _SOURCE_OFFSET.get(source)
            if offset is not None:
                chances[base + offset] = found[source]
    sources = np.array(chances).reshape(n, len(SOURCES))
    if unsourced:
        sources[unsourced] = np.nan
    x[:, COLUMN["retrieval_score"]] = scores
    x[:, COLUMN["retrieval_position"]] = np.arange(n) if positions is None else positions
    x[:, _SOURCE_COLUMNS] = sources

    recent = list(recent_items[:MAX_RECENT])
    with state._lock:
        lookup = state._index.get
        index = np.array([lookup(i, -1) for i in ids], dtype=np.int64)
        known = index >= 0
        safe = np.where(known, index, 0)
        popularity = state._popularity(index)
        first = state._numbers[safe, _FIRST]
        percentile = state._price_percentiles(index)
        if not all(categories):
            names = state._category_names
            for row, c in enumerate(np.where(known, state._category[safe], -1).tolist()):
                if not categories[row] and c >= 0:
                    categories[row] = names[c]
        wanted = set(index.tolist()) if recent else set()
        bought = state._co_signals(0, recent, wanted) if recent else {}
        viewed = state._co_signals(1, recent, wanted) if recent else {}
    x[:, _POP] = popularity
    x[:, COLUMN["popularity_trend"]] = np.divide(
        popularity[:, 1],
        popularity[:, 2],
        out=np.zeros(n),
        where=popularity[:, 2] > 0,
    )
    x[:, COLUMN["item_age_days"]] = np.where(known, np.maximum(now_s - first, 0.0) / DAY_S, 0.0)

    x[:, COLUMN["category_affinity"]] = _affinities(member, categories)
    mine = member_price_percentile(member)
    x[:, COLUMN["item_price_percentile"]] = percentile
    if mine is None:
        x[:, COLUMN["price_fit"]] = NEUTRAL_FIT
    else:
        x[:, COLUMN["price_fit"]] = np.where(
            np.isnan(percentile), NEUTRAL_FIT, 1.0 - np.abs(mine - percentile)
        )

    index_list = index.tolist()
    if bought:
        x[:, COLUMN["co_bought"]] = [bought.get(i, 0.0) for i in index_list]
    if viewed:
        x[:, COLUMN["co_viewed"]] = [viewed.get(i, 0.0) for i in index_list]
    if recent:
        rank_of: dict[str, int] = {}
        for rank, item_id in enumerate(recent):
            rank_of.setdefault(item_id, rank)
        x[:, COLUMN["recently_seen"]] = [
            1.0 / (1 + rank_of[i]) if i in rank_of else 0.0 for i in ids
        ]
    x[:, COLUMN["r_score"]] = member.r_score
    x[:, COLUMN["f_score"]] = member.f_score
    x[:, COLUMN["m_score"]] = member.m_score
    column = _PLACEMENT_COLUMN.get(placement)
    if column is not None:
        x[:, column] = 1.0
    return x


def features(
    member: MemberContext,
    candidate: CandidateLike,
    placement: str,
    position: int,
    state: ItemFeatureState,
    now: datetime,
    recent_items: Sequence[str] = (),
) -> list[float]:
    """One candidate's features: its row of `feature_matrix` (no feature depends on the
    other candidates of a request)."""
    row = feature_matrix(member, [candidate], placement, state, now, recent_items, [position])
    return [float(v) for v in row[0]]


def _affinities(member: MemberContext, categories: list[str]) -> list[float]:
    """The member's decayed share of interest in each category; the undecayed share of
    their weights when the portrait's affinities were not sent."""
    shares = member.affinities
    if shares:
        return [shares.get(c, 0.0) if c else 0.0 for c in categories]
    if not member.category_weights:
        return [0.0] * len(categories)
    total = sum(member.category_weights.values())
    return [member.affinity(c, total) for c in categories]
