"""Baseline recommenders for offline evaluation, behind one `Model` interface.

Popularity, Trending, BuyAgain, ItemKNN (cosine or co-occurrence) and EASE. All but BuyAgain
fill their lists up to k with the most popular items, so a list is k long whenever the train
catalog has k items that are not excluded; BuyAgain returns only the member's own items.
Scores are computed for a batch of members at a time as a dense members x items block and the
top k picked with `top_k`; the item columns are ordered by popularity, so ties (and members
without history) fall back to popularity by construction.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from services.evaluation.data import Interaction

SECONDS_PER_DAY = 86_400.0
# Cells of one dense score block (members x items, float64): about 32 MB.
BLOCK_CELLS = 4_000_000
BYTES_PER_FLOAT32 = 4

Exclude = Mapping[str, Collection[str]]


class Model(abc.ABC):
    """A recommender: fit on train interactions, then top-k lists for a batch of members."""

    name: str = "model"
    # Set by `fit` when the model cannot run on this data or machine: the reason, for the report.
    skipped: str | None = None

    @abc.abstractmethod
    def fit(self, train: Sequence[Interaction], categories: Mapping[str, str]) -> None:
        """Learn from `train`; `categories` maps items to categories (may be empty)."""

    @abc.abstractmethod
    def recommend(
        self, member_ids: Sequence[str], k: int, exclude: Exclude
    ) -> dict[str, list[str]]:
        """Up to k items per member, best first, none of `exclude[member]` (missing = none)."""

    def params(self) -> dict[str, object]:
        """Hyperparameters, for the report."""
        return {}

    def curves(self) -> dict[str, list[float]]:
        """Training curves (e.g. loss per epoch) when the model has them, for the report."""
        return {}


# --------------------------------------------------------------------------- the matrix


@dataclass
class InteractionMatrix:
    """Train interactions indexed once per fit: ids <-> rows/columns, plus per-event arrays.

    Item columns are ordered by popularity (distinct members, most first; ties by item id).
    """

    members: list[str]
    items: list[str]
    member_index: dict[str, int]
    item_index: dict[str, int]
    binary: sp.csr_matrix  # members x items, 1.0 where the member interacted with the item
    popularity: np.ndarray  # distinct members per item column
    event_rows: np.ndarray  # per train interaction: its member row ...
    event_cols: np.ndarray  # ... its item column ...
    event_ages: np.ndarray  # ... and its age in days before the newest train interaction

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.members), len(self.items)

    def rows_of(self, member_ids: Sequence[str]) -> np.ndarray:
        """Row per member, -1 for members without train interactions."""
        return np.array([self.member_index.get(m, -1) for m in member_ids], dtype=np.int64)


def build_matrix(train: Sequence[Interaction]) -> InteractionMatrix:
    """Index `train` (any order) into an `InteractionMatrix`."""
    members = sorted({i.member_id for i in train})
    member_index = {m: row for row, m in enumerate(members)}
    first_seen: dict[str, int] = {}
    rows = np.fromiter((member_index[i.member_id] for i in train), np.int64, len(train))
    seen = np.fromiter(
        (first_seen.setdefault(i.item_id, len(first_seen)) for i in train), np.int64, len(train)
    )
    names = np.array(list(first_seen), dtype=str)
    # Distinct (member, item) pairs as one integer each: row * width + item.
    width = max(len(names), 1)
    pairs = np.unique(rows * width + seen)
    counts = np.bincount(pairs % width, minlength=len(names))
    order = np.lexsort((names, -counts))  # most popular first, then by id
    column = np.empty(len(names), dtype=np.int64)
    column[order] = np.arange(len(names))
    items = [str(name) for name in names[order]]
    binary = sp.csr_matrix(
        (np.ones(len(pairs)), (pairs // width, column[pairs % width])),
        shape=(len(members), len(items)),
    )
    times = np.fromiter((i.at.timestamp() for i in train), np.float64, len(train))
    newest = times.max() if len(times) else 0.0
    return InteractionMatrix(
        members=members,
        items=items,
        member_index=member_index,
        item_index={item: col for col, item in enumerate(items)},
        binary=binary,
        popularity=counts[order].astype(np.float64),
        event_rows=rows,
        event_cols=column[seen],
        event_ages=(newest - times) / SECONDS_PER_DAY,
    )


def half_life_weights(ages_days: np.ndarray, half_life_days: float) -> np.ndarray:
    """0.5 ** (age / half-life): an event one half-life old weighs half a new one."""
    return np.power(0.5, ages_days / half_life_days)


# --------------------------------------------------------------------------- top k


def top_k(scores: np.ndarray, k: int, banned: np.ndarray, pad: bool = True) -> list[np.ndarray]:
    """Per row, the columns of the k highest scores, best first, never a banned column.

    Ties go to the lower column (the more popular item). With `pad`, items scoring 0 or less
    still fill the list in that order; without, only positively scored items are returned.
    """
    key = np.where(banned, -np.inf, scores)
    if not pad:
        key[key <= 0] = -np.inf
    n_rows, n_cols = key.shape
    kept = min(k, n_cols)
    if kept <= 0 or n_rows == 0:
        return [np.empty(0, dtype=np.int64) for _ in range(n_rows)]
    part = np.argpartition(-key, kept - 1, axis=1)[:, :kept]
    threshold = np.take_along_axis(key, part, axis=1).min(axis=1)[:, None]
    above = key > threshold
    tied = key == threshold
    # Of the columns tied at the threshold, only as many as fit, lowest column first.
    room = kept - above.sum(axis=1, keepdims=True)
    chosen = (above | (tied & (np.cumsum(tied, axis=1) <= room))) & np.isfinite(key)
    rows, cols = np.nonzero(chosen)
    order = np.lexsort((cols, -key[rows, cols], rows))
    return np.split(cols[order], np.cumsum(np.bincount(rows, minlength=n_rows))[:-1])


class MatrixModel(Model):
    """A model that scores every train item for a member: fit indexes the matrix, recommend
    scores members block by block and picks the top k."""

    pad = True  # fill lists with popular items when the model's own scores run out

    def __init__(self) -> None:
        self.matrix: InteractionMatrix | None = None

    def fit(self, train: Sequence[Interaction], categories: Mapping[str, str]) -> None:
        self.skipped = None
        self.matrix = build_matrix(train)
        self._fit(self.matrix)

    @abc.abstractmethod
    def _fit(self, matrix: InteractionMatrix) -> None:
        """Learn from the indexed train matrix (may set `skipped`)."""

    @abc.abstractmethod
    def _scores(self, rows: np.ndarray) -> np.ndarray:
        """Dense scores (len(rows) x items) for member rows; row -1 is a member never seen."""

    def recommend(
        self, member_ids: Sequence[str], k: int, exclude: Exclude
    ) -> dict[str, list[str]]:
        matrix = self._fitted()
        block = max(1, BLOCK_CELLS // max(len(matrix.items), 1))
        found: dict[str, list[str]] = {}
        for start in range(0, len(member_ids), block):
            batch = list(member_ids[start : start + block])
            rows = matrix.rows_of(batch)
            scores = self._scores(rows) if len(matrix.items) else np.zeros((len(batch), 0))
            picked = top_k(scores, k, _banned(matrix, batch, exclude), self.pad)
            for member, cols in zip(batch, picked, strict=True):
                found[member] = [matrix.items[c] for c in cols]
        return found

    def _fitted(self) -> InteractionMatrix:
        if self.skipped is not None:
            raise RuntimeError(f"{self.name} was skipped: {self.skipped}")
        if self.matrix is None:
            raise RuntimeError(f"{self.name}: recommend before fit")
        return self.matrix

    def _known_rows(
        self, rows: np.ndarray, compute: Callable[[np.ndarray], np.ndarray]
    ) -> np.ndarray:
        """`compute` on the rows of known members; zeros for unknown ones (row -1)."""
        matrix = self._fitted()
        scores = np.zeros((len(rows), len(matrix.items)))
        known = rows >= 0
        if known.any():
            scores[known] = compute(rows[known])
        return scores


def _banned(matrix: InteractionMatrix, batch: list[str], exclude: Exclude) -> np.ndarray:
    banned = np.zeros((len(batch), len(matrix.items)), dtype=bool)
    index = matrix.item_index
    for row, member in enumerate(batch):
        cols = [index[item] for item in exclude.get(member, ()) if item in index]
        banned[row, cols] = True
    return banned


# --------------------------------------------------------------------------- the baselines


class Popularity(MatrixModel):
    """The items most members interacted with, the same for everyone."""

    name = "popularity"

    def _fit(self, matrix: InteractionMatrix) -> None:
        pass

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        popularity = self._fitted().popularity
        return np.broadcast_to(popularity, (len(rows), len(popularity)))


class Trending(MatrixModel):
    """Popularity over the last `window_days` of train, newer interest weighing more.

    Each member-item pair in the window counts once, weighted by the half-life decay of its
    latest interaction; items without recent interest follow in overall popularity order.
    """

    name = "trending"

    def __init__(self, window_days: float = 14.0, half_life_days: float = 7.0) -> None:
        super().__init__()
        self.window_days, self.half_life_days = window_days, half_life_days
        self.trend: np.ndarray = np.zeros(0)

    def params(self) -> dict[str, object]:
        return {"window_days": self.window_days, "half_life_days": self.half_life_days}

    def _fit(self, matrix: InteractionMatrix) -> None:
        recent = matrix.event_ages <= self.window_days
        weights = half_life_weights(matrix.event_ages[recent], self.half_life_days)
        n_items = max(len(matrix.items), 1)
        pair_ids = matrix.event_rows[recent] * n_items + matrix.event_cols[recent]
        pairs, inverse = np.unique(pair_ids, return_inverse=True)
        latest = np.zeros(len(pairs))
        np.maximum.at(latest, inverse, weights)
        self.trend = np.bincount(pairs % n_items, weights=latest, minlength=len(matrix.items))

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.trend, (len(rows), len(self.trend)))


class BuyAgain(MatrixModel):
    """The member's own items: how often, each time decayed by its age; nothing else."""

    name = "buy_again"
    pad = False

    def __init__(self, half_life_days: float = 60.0) -> None:
        super().__init__()
        self.half_life_days = half_life_days
        self.own = sp.csr_matrix((0, 0))

    def params(self) -> dict[str, object]:
        return {"half_life_days": self.half_life_days}

    def _fit(self, matrix: InteractionMatrix) -> None:
        weights = half_life_weights(matrix.event_ages, self.half_life_days)
        # Duplicate (row, col) entries are summed: frequency, with each event decayed.
        self.own = sp.csr_matrix(
            (weights, (matrix.event_rows, matrix.event_cols)), shape=matrix.shape
        )

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        return self._known_rows(rows, lambda known: self.own[known].toarray())


class ItemKNN(MatrixModel):
    """Item-item neighbours over the binary member x item matrix.

    similarity "cosine" divides co-occurrence counts by sqrt(n_i * n_j); "cooccurrence" keeps
    the raw counts. Each item keeps its `neighbours` most similar items; a member's score for
    an item is the sum of its similarities to the member's items.
    """

    def __init__(self, similarity: str = "cosine", neighbours: int = 100) -> None:
        super().__init__()
        if similarity not in ("cosine", "cooccurrence"):
            raise ValueError(f"similarity is cosine or cooccurrence, not {similarity!r}")
        self.similarity, self.neighbours = similarity, neighbours
        self.name = "item_knn" if similarity == "cosine" else "item_knn_cooc"
        self.similar = sp.csr_matrix((0, 0))

    def params(self) -> dict[str, object]:
        return {"similarity": self.similarity, "neighbours": self.neighbours}

    def _fit(self, matrix: InteractionMatrix) -> None:
        x = matrix.binary
        counts = sp.csr_matrix(x.T @ x)
        counts.setdiag(0)  # an item is not its own neighbour
        counts.eliminate_zeros()
        if self.similarity == "cosine":
            scale = sp.diags(1.0 / np.sqrt(np.maximum(matrix.popularity, 1.0)))
            counts = sp.csr_matrix(scale @ counts @ scale)
        self.similar = keep_top_per_row(counts, self.neighbours)

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        binary = self._fitted().binary
        return self._known_rows(rows, lambda known: (binary[known] @ self.similar).toarray())


def keep_top_per_row(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """The `n` largest entries of each row (ties: lower column), the rest dropped."""
    coo = matrix.tocoo()
    order = np.lexsort((coo.col, -coo.data, coo.row))
    rows, cols, data = coo.row[order], coo.col[order], coo.data[order]
    starts = np.searchsorted(rows, np.arange(matrix.shape[0]))
    rank = np.arange(len(rows)) - starts[rows]
    keep = rank < n
    return sp.csr_matrix((data[keep], (rows[keep], cols[keep])), shape=matrix.shape)


class EASE(MatrixModel):
    """Embarrassingly Shallow Autoencoder (Steck 2019): B = I - P / diag(P), P = (XᵀX + λI)⁻¹.

    Needs two dense items x items float32 matrices and O(items³) time (about 1 s for 3,600
    items, minutes for 18,000 on two cores): skipped above `max_items`.
    """

    name = "ease"

    def __init__(self, l2: float = 500.0, max_items: int = 20_000) -> None:
        super().__init__()
        self.l2, self.max_items = l2, max_items
        self.weights: np.ndarray = np.zeros((0, 0), dtype=np.float32)

    def params(self) -> dict[str, object]:
        return {"l2": self.l2, "max_items": self.max_items}

    def _fit(self, matrix: InteractionMatrix) -> None:
        n_items = len(matrix.items)
        if n_items > self.max_items:
            gib = n_items**2 * BYTES_PER_FLOAT32 / 2**30
            self.skipped = (
                f"{n_items:,} items > max_items {self.max_items:,}: each dense item x item "
                f"matrix would take {gib:.1f} GiB, and inverting one O(items³) time"
            )
            return
        # float32: half the memory and about twice as fast as float64, and accurate enough
        # (XᵀX + λI is well conditioned for λ in the hundreds).
        gram = (matrix.binary.T @ matrix.binary).toarray().astype(np.float32)
        gram[np.diag_indices(n_items)] += self.l2
        inverse = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        del gram
        weights = inverse / -np.diag(inverse)  # column j divided by -P_jj
        weights[np.diag_indices(n_items)] = 0.0
        self.weights = weights

    def _scores(self, rows: np.ndarray) -> np.ndarray:
        binary = self._fitted().binary
        return self._known_rows(rows, lambda known: np.asarray(binary[known] @ self.weights))


def _item_knn_cooccurrence() -> Model:
    return ItemKNN(similarity="cooccurrence")


BASELINES: dict[str, Callable[[], Model]] = {
    "popularity": Popularity,
    "trending": Trending,
    "buy_again": BuyAgain,
    "item_knn": ItemKNN,
    "item_knn_cooc": _item_knn_cooccurrence,
    "ease": EASE,
}
