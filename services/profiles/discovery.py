"""Segment discovery: members clustered on their portraits, each cluster a ready segment.

Who is clustered: members with at least one order. Members without one (prospects, and new
visitors) have no recency and no scores, and every RFM comparison of the condition
language is false for them: they would only form a cluster of their own, which a condition
names already (`frequency == 0`). They are counted and left out.

Features, one row per member who ordered (float32, a few columns each):

* RFM: the R, F and M scores (1-5) when every member who ordered has them; before the
  profiles service computed any score boundaries, log(1 + x) of recency in days, orders and
  spend (negative spend counts as 0);
* affinities: the member's share of decayed affinity in each of the `top_categories`
  categories with the most affinity over everyone clustered (the sum of the shares);
  categories a condition cannot name are skipped.

Every column is standardised (StandardScaler) and k-means (scikit-learn's KMeans, fixed
random_state and n_init) groups the rows; the clusters are numbered by size, largest first.

Each cluster gets:

* a description from its centroid in standard deviations: a figure at least STANDS_OUT
  above or below the mean of everyone clustered is named ("recent", "lapsed", "frequent",
  "infrequent", "high spenders", "low spenders"), and so is a category that is half of the
  cluster's affinity on average ("mostly kitchen") or stands out ("more garden than most");
  the medians of its orders, spend and recency follow;
* a condition of the condition language (services/profiles/conditions.py) that
  approximates it: up to MAX_CLAUSES bounds joined by `and`, chosen greedily for the F1
  score against the cluster among the clustered members; a bound is a quantile of the
  cluster's own values on one feature (`>=` its 5th, 10th, 25th or 50th percentile,
  `<=` its 95th, 90th, 75th or 50th), rounded outwards to a readable number. A condition
  that a member without an order could meet (only share bounds, `frequency <= 2`,
  `monetary <= 50`: such a member has 0 orders and 0 spend, and no recency or scores) gets
  `and frequency >= 1`, so that as a segment it leaves them out, as the clustering did;
* the condition's precision and recall against the cluster, from the parsed condition
  (conditions.parse) evaluated on the members' values, on every member clustered or, past
  EVALUATION_LIMIT of them, on a fixed random sample of that many.

For the same members in the same order the result is the same.
"""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from services.profiles.conditions import LIFECYCLES, parse
from services.profiles.portrait import Portrait, values

MIN_K, MAX_K = 2, 20
DEFAULT_TOP_CATEGORIES = 5
MAX_TOP_CATEGORIES = 10
RANDOM_STATE = 0
# Five starts: on the few well-separated dimensions here more found the same clusters.
N_INIT = 5
MAX_CLAUSES = 3
MIN_GAIN = 0.01  # the F1 score a further bound must add
LOWER_QUANTILES = (0.05, 0.1, 0.25, 0.5)
STANDS_OUT = 0.5  # standard deviations from the mean of everyone clustered
MOSTLY = 0.5  # mean affinity share of one category for "mostly <category>"
EVALUATION_LIMIT = 100_000
# A hundred years: any longer window is every member.
MAX_WINDOW_DAYS = 36_500
# What the segments API takes (services/profiles/segments.py).
MAX_NAME = 64
MAX_DESCRIPTION = 500

Mode = Literal["scores", "figures"]

FIGURES = ("recency_days", "frequency", "monetary")
SCORES = ("r_score", "f_score", "m_score")
RFM_FIELDS = FIGURES + SCORES
# The portrait rounds these; values rebuilt from float32 are rounded the same way.
_DECIMALS = {"recency_days": 2, "frequency": 0, "monetary": 2, "affinity": 6}
_PLAIN_CATEGORY = re.compile(r"[a-z_][a-z0-9_-]*")
_KEYWORDS = frozenset({"and", "or", "not", "in"})


class NotEnoughMembers(ValueError):
    """Fewer members who ordered (or fewer different ones) than clusters asked for."""


def category_field(category: str) -> str | None:
    """How a condition names the category's affinity share; None when it cannot."""
    if _PLAIN_CATEGORY.fullmatch(category) and category not in _KEYWORDS:
        return f"affinity.{category}"
    if re.search(r"[\x00-\x1f]", category):
        return None
    for quote in ("'", '"'):
        if quote not in category:
            return f"affinity[{quote}{category}{quote}]"
    return None


class Collector:
    """One pass over members' values, keeping a few numbers per member who ordered."""

    def __init__(self) -> None:
        self.seen = 0
        self.without_order = 0
        self._rows = 0
        self._rfm = array("f")  # recency_days, frequency, monetary, r, f, m (NaN: none)
        self._shares_row = array("q")
        self._shares_column = array("i")
        self._shares = array("f")
        self._categories: dict[str, int] = {}
        self._totals: list[float] = []

    def add(self, found: Mapping[str, Any]) -> None:
        """Count one member from their portrait's values (portrait.values)."""
        self.seen += 1
        recency, frequency = found.get("recency_days"), found.get("frequency") or 0
        if recency is None or frequency < 1:
            self.without_order += 1
            return
        scores = [found.get(name) for name in SCORES]
        self._rfm.extend(
            [
                float(recency),
                float(frequency),
                float(found.get("monetary") or 0.0),
                *(math.nan if s is None else float(s) for s in scores),
            ]
        )
        for key, share in found.items():
            if key.startswith("affinity.") and share:
                column = self._categories.setdefault(key[len("affinity.") :], len(self._totals))
                if column == len(self._totals):
                    self._totals.append(0.0)
                self._totals[column] += share
                self._shares_row.append(self._rows)
                self._shares_column.append(column)
                self._shares.append(share)
        self._rows += 1

    def table(self, top_categories: int = DEFAULT_TOP_CATEGORIES) -> FeatureTable:
        """The features: RFM columns, then the leading categories' shares."""
        rfm = np.frombuffer(self._rfm, dtype=np.float32).reshape(-1, len(RFM_FIELDS))
        scored = self._rows > 0 and not np.isnan(rfm[:, len(FIGURES) :]).any()
        expressible = [c for c in self._categories if category_field(c) is not None]
        leading = sorted(expressible, key=lambda c: (-self._totals[self._categories[c]], c))
        categories = tuple(leading[:top_categories])
        raw = np.zeros((self._rows, len(RFM_FIELDS) + len(categories)), dtype=np.float32)
        raw[:, : len(RFM_FIELDS)] = rfm
        rows = np.frombuffer(self._shares_row, dtype=np.int64)
        columns = np.frombuffer(self._shares_column, dtype=np.int32)
        shares = np.frombuffer(self._shares, dtype=np.float32)
        for j, category in enumerate(categories):
            pick = columns == self._categories[category]
            raw[rows[pick], len(RFM_FIELDS) + j] = shares[pick]
        return FeatureTable(
            raw=raw,
            mode="scores" if scored else "figures",
            categories=categories,
            seen=self.seen,
            without_order=self.without_order,
        )


@dataclass(frozen=True)
class FeatureTable:
    """Rows of members who ordered: RFM_FIELDS, then `affinity.<category>` per category."""

    raw: np.ndarray
    mode: Mode
    categories: tuple[str, ...]
    seen: int
    without_order: int

    @property
    def fields(self) -> tuple[str, ...]:
        """The values keys of the columns (`affinity.home-decor`)."""
        return RFM_FIELDS + tuple(f"affinity.{c}" for c in self.categories)

    @property
    def model_columns(self) -> tuple[int, ...]:
        """The columns k-means sees: the scores or the figures, then the shares."""
        rfm = SCORES if self.mode == "scores" else FIGURES
        return tuple(RFM_FIELDS.index(f) for f in rfm) + tuple(
            range(len(RFM_FIELDS), len(RFM_FIELDS) + len(self.categories))
        )

    def field_text(self, column: int) -> str:
        """The column as a condition names it."""
        if column < len(RFM_FIELDS):
            return RFM_FIELDS[column]
        text = category_field(self.categories[column - len(RFM_FIELDS)])
        assert text is not None  # Collector.table keeps expressible categories only
        return text

    def values_of(self, row: int) -> dict[str, Any]:
        """The row as portrait values, rounded as the portrait rounds them."""
        found: dict[str, Any] = {}
        for column, key in enumerate(self.fields):
            value = float(self.raw[row, column])
            if math.isnan(value):
                continue
            decimals = _DECIMALS.get(key.split(".")[0], 0)
            found[key] = round(value, decimals) if decimals else round(value)
        return found


@dataclass(frozen=True)
class Bound:
    column: int
    op: Literal[">=", "<="]
    threshold: float

    def text(self, table: FeatureTable) -> str:
        return f"{table.field_text(self.column)} {self.op} {_literal(self.threshold)}"

    @property
    def needs_an_order(self) -> bool:
        """Whether a member without an order fails it (no recency or scores, 0 orders)."""
        if self.column >= len(RFM_FIELDS):
            return False
        field = RFM_FIELDS[self.column]
        if field == "frequency":
            return self.op == ">=" and self.threshold >= 1
        if field == "monetary":
            return self.op == ">=" and self.threshold > 0
        return True

    def mask(self, raw: np.ndarray) -> np.ndarray:
        column = raw[:, self.column]
        threshold = np.float32(self.threshold)
        return column >= threshold if self.op == ">=" else column <= threshold


@dataclass(frozen=True)
class Cluster:
    number: int  # 1 = the largest
    name: str
    description: str
    size: int
    share: float  # of the members clustered
    condition: str
    precision: float  # of the condition's matches, the share in the cluster
    recall: float  # of the cluster, the share the condition matches
    matched: int  # members clustered the condition matches (estimated from a sample)
    medians: dict[str, float]  # recency_days, frequency, monetary

    def definition(self, discovery: Discovery) -> dict[str, str]:
        """The body of `POST /v1/segments` that saves this cluster as a segment."""
        sampled = (
            f" (on a sample of {discovery.evaluated_on})"
            if discovery.evaluated_on < discovery.clustered
            else ""
        )
        description = (
            f"{self.description}. Discovered by k-means (k={discovery.k}): "
            f"{self.size} of {discovery.clustered} members who ordered "
            f"({self.share:.1%}); the condition's precision {self.precision:.2f}, "
            f"recall {self.recall:.2f}{sampled}."
        )
        if len(description) > MAX_DESCRIPTION:
            description = description[: MAX_DESCRIPTION - 3] + "..."
        return {"name": self.name, "condition": self.condition, "description": description}


@dataclass(frozen=True)
class Discovery:
    k: int
    mode: Mode
    features: tuple[str, ...]  # as conditions name them, in the model's order
    seen: int
    clustered: int
    without_order: int
    evaluated_on: int
    clusters: list[Cluster]

    def definitions(self) -> list[dict[str, str]]:
        return [cluster.definition(self) for cluster in self.clusters]


def check_k(k: int) -> None:
    if not MIN_K <= k <= MAX_K:
        raise ValueError(f"k is {MIN_K} to {MAX_K}, not {k}")


def discover(
    portraits: Iterable[Portrait],
    k: int,
    top_categories: int = DEFAULT_TOP_CATEGORIES,
    window_days: float | None = None,
) -> Discovery:
    """Cluster the members whose portraits these are (read once, none kept). A member who
    withdrew personalization consent is left out: their portrait drives no targeting.

    With `window_days`, only the members whose last order is at most that many days old are
    looked at, and every condition says so, so that a saved segment keeps to the window too.
    """
    found = (values(p) for p in portraits if p.consent.get("personalization", True))
    if window_days is None:
        return discover_values(found, k, top_categories)
    check_window(window_days)
    recent = (v for v in found if _ordered_within(v, window_days))
    return windowed(discover_values(recent, k, top_categories), window_days)


def check_window(window_days: float) -> None:
    if not 0 < window_days <= MAX_WINDOW_DAYS:
        raise ValueError(f"window_days is above 0 and at most {MAX_WINDOW_DAYS}, not {window_days}")


def _ordered_within(found: Mapping[str, Any], window_days: float) -> bool:
    recency = found.get("recency_days")
    return recency is not None and recency <= window_days


def windowed(discovery: Discovery, window_days: float) -> Discovery:
    """The clusters with the window added to their conditions. Precision and recall stay:
    every member clustered is within the window, so the added bound holds for each."""
    bound = f"recency_days <= {_literal(window_days)}"
    clusters = [replace(c, condition=f"{c.condition} and {bound}") for c in discovery.clusters]
    return replace(discovery, clusters=clusters)


def discover_values(
    found: Iterable[Mapping[str, Any]], k: int, top_categories: int = DEFAULT_TOP_CATEGORIES
) -> Discovery:
    """Cluster members from their portraits' values (portrait.values)."""
    check_k(k)
    if not 0 <= top_categories <= MAX_TOP_CATEGORIES:
        raise ValueError(f"top categories is 0 to {MAX_TOP_CATEGORIES}, not {top_categories}")
    collector = Collector()
    for member in found:
        collector.add(member)
    return cluster(collector.table(top_categories), k)


def cluster(table: FeatureTable, k: int) -> Discovery:
    """k-means on the table's standardised model columns, each cluster described."""
    # Imported here: scikit-learn takes a second to import, and the CLI imports this module.
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    check_k(k)
    members = table.raw.shape[0]
    if members < k:
        raise NotEnoughMembers(
            f"{members} members who ordered ({table.without_order} without an order left out)"
            f": fewer than k={k}"
        )
    columns = list(table.model_columns)
    model = table.raw[:, columns].copy()
    if table.mode == "figures":
        model[:, :3] = np.log1p(np.maximum(model[:, :3], 0.0))
    scaled = StandardScaler().fit_transform(model).astype(np.float32)
    distinct = len(np.unique(scaled, axis=0))
    if distinct < k:
        raise NotEnoughMembers(
            f"{members} members who ordered have only {distinct} different features: "
            f"fewer than k={k}"
        )
    kmeans = KMeans(n_clusters=k, n_init=N_INIT, random_state=RANDOM_STATE).fit(scaled)
    labels, centers = _by_size(kmeans.labels_, kmeans.cluster_centers_, k)

    evaluation = _evaluation_rows(members)
    rows = [table.values_of(int(i)) for i in evaluation]
    names: set[str] = set()
    found = []
    for number in range(k):
        in_cluster = labels == number
        bounds = _bounds(table, in_cluster)
        condition = " and ".join(b.text(table) for b in bounds)
        if not any(b.needs_an_order for b in bounds):
            condition = f"{condition} and frequency >= 1" if condition else "frequency >= 1"
        precision, recall, matched = _agreement(condition, table, rows, in_cluster[evaluation])
        medians = {
            f: round(float(np.median(table.raw[in_cluster, i])), 2) for i, f in enumerate(FIGURES)
        }
        words, description = _describe(table, columns, centers[number], in_cluster, medians)
        found.append(
            Cluster(
                number=number + 1,
                name=_name(words, names),
                description=description,
                size=int(in_cluster.sum()),
                share=float(in_cluster.mean()),
                condition=condition,
                precision=precision,
                recall=recall,
                matched=matched,
                medians=medians,
            )
        )
    return Discovery(
        k=k,
        mode=table.mode,
        features=tuple(table.field_text(c) for c in columns),
        seen=table.seen,
        clustered=members,
        without_order=table.without_order,
        evaluated_on=len(evaluation),
        clusters=found,
    )


def _by_size(labels: np.ndarray, centers: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Clusters renumbered largest first (ties: by centroid), so output reads the same."""
    sizes = np.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda c: (-sizes[c], tuple(float(x) for x in centers[c])))
    renumber = np.empty(k, dtype=np.int64)
    renumber[order] = np.arange(k)
    return renumber[labels], centers[order]


def _evaluation_rows(members: int) -> np.ndarray:
    if members <= EVALUATION_LIMIT:
        return np.arange(members)
    rng = np.random.default_rng(RANDOM_STATE)
    return np.sort(rng.choice(members, EVALUATION_LIMIT, replace=False))


def _bounds(table: FeatureTable, in_cluster: np.ndarray) -> list[Bound]:
    """Greedily, the bounds whose conjunction has the best F1 against the cluster."""
    raw, size = table.raw, int(in_cluster.sum())
    candidates = _candidates(table, in_cluster)
    chosen: list[Bound] = []
    current = np.ones(raw.shape[0], dtype=bool)
    score = 2 * size / (raw.shape[0] + size)
    for _ in range(MAX_CLAUSES):
        best: tuple[float, Bound, np.ndarray] | None = None
        for bound in candidates:
            if any(b.column == bound.column and b.op == bound.op for b in chosen):
                continue
            selected = current & bound.mask(raw)
            f1 = 2 * int((selected & in_cluster).sum()) / (int(selected.sum()) + size)
            if best is None or f1 > best[0]:
                best = (f1, bound, selected)
        if best is None or best[0] - score < MIN_GAIN:
            break
        score, bound, current = best
        chosen.append(bound)
    return sorted(chosen, key=lambda b: (b.column, b.op))


def _candidates(table: FeatureTable, in_cluster: np.ndarray) -> list[Bound]:
    found: dict[tuple[int, str, float], Bound] = {}
    for column in table.model_columns:
        field = table.fields[column]
        ours = table.raw[in_cluster, column].astype(np.float64)
        for q in LOWER_QUANTILES:
            low = _readable(field, float(np.quantile(ours, q, method="lower")), down=True)
            high = _readable(field, float(np.quantile(ours, 1 - q, method="higher")), down=False)
            for bound in (Bound(column, ">=", low), Bound(column, "<=", high)):
                if not bound.mask(table.raw).all():
                    found.setdefault((column, bound.op, bound.threshold), bound)
    return list(found.values())


def _readable(field: str, value: float, down: bool) -> float:
    """`value` rounded outwards (down for a lower bound) to a number people read easily."""
    if field.startswith("affinity."):
        step = 0.01
    elif field == "monetary":
        # Two significant figures.
        step = 10.0 ** (math.floor(math.log10(abs(value))) - 1) if abs(value) >= 1 else 0.1
    else:
        step = 1.0  # scores, orders, days
    scaled = round(value / step, 6)
    units = math.floor(scaled) if down else math.ceil(scaled)
    decimals = max(0, -math.floor(math.log10(step)))
    return round(units * step, decimals)


def _literal(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _agreement(
    condition: str, table: FeatureTable, rows: Sequence[Mapping[str, Any]], truth: np.ndarray
) -> tuple[float, float, int]:
    """Precision and recall of the parsed condition on the evaluation rows, and how many
    members clustered it matches (scaled up from a sample)."""
    members = table.raw.shape[0]
    parsed = parse(condition)
    unknown = parsed.fields - set(table.fields)
    if unknown:
        raise ValueError(f"the condition reads fields discovery does not keep: {unknown}")
    selected = np.fromiter((parsed(row) for row in rows), dtype=bool, count=len(rows))
    hits = int((selected & truth).sum())
    matched = int(selected.sum())
    positives = int(truth.sum())
    return (
        round(hits / matched, 4) if matched else 0.0,
        round(hits / positives, 4) if positives else 0.0,
        round(matched * members / len(rows)),
    )


def _describe(
    table: FeatureTable,
    columns: list[int],
    center: np.ndarray,
    in_cluster: np.ndarray,
    medians: Mapping[str, float],
) -> tuple[list[str], str]:
    """Name words and a plain description of the cluster from its centroid."""
    z = dict(zip(columns, (float(v) for v in center), strict=True))
    # In figures, a higher recency is an older last order.
    recent = -z[0] if table.mode == "figures" else z[RFM_FIELDS.index("r_score")]
    frequency = z[1] if table.mode == "figures" else z[RFM_FIELDS.index("f_score")]
    spend = z[2] if table.mode == "figures" else z[RFM_FIELDS.index("m_score")]
    words = [
        w
        for w in (
            _word(recent, "recent", "lapsed"),
            _word(frequency, "frequent", "infrequent"),
        )
        if w
    ]
    words.append(_word(spend, "high spenders", "low spenders") or "mid spenders")
    rfm = ", ".join(words)

    name_words = list(words)
    categories = ""
    if table.categories:
        base = len(RFM_FIELDS)
        shares = [
            (float(table.raw[in_cluster, base + j].mean()), c)
            for j, c in enumerate(table.categories)
        ]
        top_share, top = min(shares, key=lambda s: (-s[0], s[1]))
        standing_out = sorted(
            (c for j, c in enumerate(table.categories) if z[base + j] >= STANDS_OUT),
            key=lambda c: -z[base + table.categories.index(c)],
        )[:2]
        if top_share >= MOSTLY:
            categories = f"; mostly {top}"
            name_words.append(top)
        elif standing_out:
            categories = f"; more {' and '.join(standing_out)} than most"
            name_words.extend(standing_out)
        else:
            categories = "; no category stands out"
    figures = (
        f"median {_plural(medians['frequency'], 'order')}, {medians['monetary']:,.0f} spent, "
        f"last order {medians['recency_days']:,.0f} days ago"
    )
    return name_words, f"{rfm}{categories} ({figures})"


def _word(z: float, high: str, low: str) -> str:
    return high if z >= STANDS_OUT else low if z <= -STANDS_OUT else ""


def _plural(count: float, noun: str) -> str:
    shown = f"{count:g}"
    return f"{shown} {noun}" if count == 1 else f"{shown} {noun}s"


def _name(words: list[str], taken: set[str]) -> str:
    """A segment name from the words: lower case, digits, '-' (unique, not a lifecycle)."""
    slug = re.sub(r"[^a-z0-9_]+", "-", "-".join(words).lower()).strip("-_")[:MAX_NAME]
    slug = slug.rstrip("-_") or "members"
    if slug in LIFECYCLES:
        slug = f"{slug}-members"
    name, n = slug, 1
    while name in taken:
        n += 1
        suffix = f"-{n}"
        name = slug[: MAX_NAME - len(suffix)].rstrip("-_") + suffix
    taken.add(name)
    return name


def report(discovery: Discovery) -> str:
    """The clusters as text: name, size, description, condition and how well it fits."""
    basis = "RFM scores" if discovery.mode == "scores" else "log recency, orders and spend"
    if any(f.startswith("affinity") for f in discovery.features):
        basis += " and category shares"
    lines = [
        f"{discovery.clustered} members who ordered, in {discovery.k} clusters "
        f"(k-means on standardised {basis}: {', '.join(discovery.features)})",
        f"{discovery.without_order} of {discovery.seen} members have no order and are left out"
        if discovery.without_order
        else f"every one of the {discovery.seen} members has an order",
    ]
    if discovery.mode == "figures":
        lines.append("no RFM scores yet: the profiles service has not computed boundaries")
    sampled = discovery.evaluated_on < discovery.clustered
    about, on_sample = (
        ("about ", f", on a sample of {discovery.evaluated_on}") if sampled else ("", "")
    )
    for c in discovery.clusters:
        lines += [
            "",
            f"{c.number}. {c.name}: {c.size} members ({c.share:.1%})",
            f"   {c.description}",
            f"   condition: {c.condition}",
            f"   matches {about}{c.matched} members who ordered: precision {c.precision:.2f}, "
            f"recall {c.recall:.2f}{on_sample}",
        ]
    lines += [
        "",
        "Save one as a segment: POST its definition to /v1/segments "
        "(`recofleet segments discover --json` prints them).",
    ]
    return "\n".join(lines)
