"""The FAISS index over item factors, chosen by catalog size, with filters applied in the search.

`build_index` searches exactly (`IndexFlatIP`) below `exact_below` items and approximately
above, with HNSW (`IndexHNSWFlat`, inner product) by default. The choice and its
parameters come from a measurement on 250,000 synthetic items with ALS-like factors
(bench/retrieval/synthetic.py: 64 dimensions, ~6,000 category clusters spanning a
32-dimensional subspace, noise, log-normal norms; its nearest-neighbour cosines and
norm spread match ALS factors trained on Online Retail), 1,000 member queries, k=200, one
query at a time and one OpenMP thread, on this 2-core VM while other developers' jobs ran
(load average 5 to 8: the p99s are mostly the scheduler's; an earlier, quieter run had
HNSW at p99 0.65 ms and IVF at 1.2 to 3.5 ms):

    index                                  build   recall@100   p50 ms   p99 ms
    exact (IndexFlatIP)                        -        1.000     2.13     10.3
    HNSW M=32 efC=200 efSearch=256          129 s       0.957     0.45      4.8
    HNSW M=32 efC=100 efSearch=320           67 s       0.953     0.85      5.4
    HNSW M=16 efC=200 efSearch=320           81 s       0.913     0.31      4.4
    IVF nlist=2000 nprobe=384                23 s       0.927     1.03      5.6
    IVF nlist=2000 nprobe=512                23 s       0.959     1.35      5.5

(Builds ran on both cores beside the other jobs; bench/retrieval measures the chosen one
again.) Searching with faiss's default two OpenMP threads made a single exact query ~5x
slower here (14 ms against 3 ms): a server should search with one (`faiss.omp_set_num_threads`).

HNSW reaches recall@100 >= 0.95 at about half IVF's latency: inner product over factors
whose norms vary (popular items are longer) puts many true neighbours in far cells, so
IVF must probe a quarter of its lists. HNSW it is: M=32 (M=16 stays below 0.95 even at
50,000 items), efConstruction=200, and efSearch 256 up to 256,000 items, then 32 more per
doubling (320 at a million), never below k. A smaller catalog is not easier: on the same
generator 30,000 items reach 0.933 at efSearch=200 and 0.942 at 256 where 50,000 reach 0.965
and 0.970, hence the floor; exact search costs ~0.3 ms
there, so raising `exact_below` is the cheaper fix for a shop near the threshold. IVF stays
available (`approximate="ivf"`: nlist = 4 sqrt(n), nprobe = nlist/4) for catalogs where
HNSW's build time or memory (~256 bytes of graph per item at M=32) is the problem.

Filters (`allowed`, a mask over item positions) are applied inside the search through an
`IDSelectorBitmap`, so a filtered request still gets k items whenever k are allowed. But a
graph walk under a filter keeps its recall only when the filter keeps nearly everything
(exclusions): a category mask removes whole regions of the graph, and the walk heads for
the query's region where nothing is allowed. Measured on the same 250,000 items, HNSW
efSearch=256, k=200, category masks:

    share kept      0.9     0.7     0.5     0.3     0.1     0.01    0.001
    recall@100      0.953   0.939   0.919   0.878   0.753   0.293   0.091

So a filter keeping less than 90% of the items is answered exactly over the allowed items
(recall 1): their rows gathered and scored below 10% (0.3 ms at 1%), every row scored and
the rest masked above (about 3 ms at 250,000 items, one core); and so is a filtered walk
that came back with fewer than k.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import faiss
import numpy as np

Metric = Literal["ip", "cosine"]
Kind = Literal["flat", "hnsw", "ivf"]
Approximate = Literal["hnsw", "ivf"]

# faiss's bundled stubs (1.15) lack the HNSW and IVF search parameters, the numpy form of
# IDSelectorBitmap and the raw-pointer helpers: those are reached through this untyped name.
_faiss: Any = faiss

EXACT_BELOW = 20_000
FORMAT = 1
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
# A filter keeping less than this share of the items is answered exactly: the graph walk
# (or the probed cells) lose recall with such filters, category masks above all.
APPROXIMATE_FILTER_SHARE = 0.9
# Below this share the allowed rows are gathered and scored; above, every row is scored
# (one matrix-vector product) and the rest masked out, cheaper than a large gather.
GATHER_SHARE = 0.1


class CorruptIndex(ValueError):
    """An index file that is missing, unreadable or does not match what it should hold."""


@dataclass(frozen=True)
class IndexSpec:
    """What was built, and with which parameters (saved beside the index)."""

    kind: Kind
    metric: Metric
    dim: int
    size: int
    hnsw_m: int = 0
    ef_construction: int = 0
    ef_search: int = 0
    nlist: int = 0
    nprobe: int = 0


def plan(
    size: int,
    dim: int,
    metric: Metric,
    exact_below: int = EXACT_BELOW,
    approximate: Approximate = "hnsw",
) -> IndexSpec:
    """The index kind and parameters for `size` items (see the module docstring)."""
    if metric not in get_args(Metric):
        raise ValueError(f"metric must be one of {get_args(Metric)}, not {metric!r}")
    if size < exact_below:
        return IndexSpec("flat", metric, dim, size)
    if approximate == "ivf":
        nlist = max(1, min(size, round(4 * math.sqrt(size))))
        return IndexSpec("ivf", metric, dim, size, nlist=nlist, nprobe=max(1, nlist // 4))
    # 32 per doubling past a thousand items (the graph's depth grows with the log of its
    # size), never below 256: smaller catalogs are not easier (see the module docstring).
    ef_search = int(np.clip(32 * math.ceil(math.log2(max(size, 1000) / 1000)), 256, 512))
    return IndexSpec(
        "hnsw",
        metric,
        dim,
        size,
        hnsw_m=HNSW_M,
        ef_construction=HNSW_EF_CONSTRUCTION,
        ef_search=ef_search,
    )


def build_index(
    vectors: np.ndarray,
    metric: Metric,
    exact_below: int = EXACT_BELOW,
    approximate: Approximate = "hnsw",
) -> ItemIndex:
    """An index over `vectors` (n x d; position i is row i), as `plan` chooses it."""
    data = _prepared(vectors, metric)
    spec = plan(data.shape[0], data.shape[1], metric, exact_below, approximate)
    index = _empty(spec)
    if spec.kind == "ivf":
        index.train(data)
    index.add(data)
    if spec.kind == "ivf":
        faiss.extract_index_ivf(index).make_direct_map()  # for reconstruct()
    return ItemIndex(index, spec)


class ItemIndex:
    """Search, reconstruct, save and load; safe to search from several threads at once."""

    def __init__(self, index: faiss.Index, spec: IndexSpec) -> None:
        self._index = index
        self.spec = spec
        self._stored = _stored_rows(index, spec)

    @property
    def kind(self) -> Kind:
        return self.spec.kind

    @property
    def size(self) -> int:
        return self.spec.size

    @property
    def dim(self) -> int:
        return self.spec.dim

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The positions and scores of the best `k` items (of those `allowed`, a bool mask
        over positions), best first; fewer only when fewer are allowed."""
        vector = self._query(query)
        allowed_count = self.size if allowed is None else self._count(allowed)
        wanted = min(k, allowed_count)
        if wanted <= 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if allowed is not None and allowed_count < self.size * APPROXIMATE_FILTER_SHARE:
            return self._exact(vector, wanted, allowed, allowed_count)
        bitmap = None if allowed is None else np.packbits(allowed, bitorder="little")
        scores, positions = self._index.search(vector, wanted, params=self._params(wanted, bitmap))
        found = positions[0] >= 0
        if int(found.sum()) < wanted:
            # A graph or cell walk that ran out before k: answer exactly instead.
            mask = allowed if allowed is not None else np.ones(self.size, dtype=bool)
            return self._exact(vector, wanted, mask, allowed_count)
        return positions[0][found].astype(np.int64), scores[0][found]

    def reconstruct(self, position: int) -> np.ndarray:
        """The stored vector at `position` (unit length for a cosine index)."""
        if not 0 <= position < self.size:
            raise IndexError(f"position {position} is outside the index's {self.size} items")
        return np.asarray(self._index.reconstruct(int(position)), dtype=np.float32)

    def save(self, path: Path) -> None:
        """Write the index to `path` and its spec to `path` + `.json`."""
        faiss.write_index(self._index, str(path))
        spec = {"format": FORMAT, **asdict(self.spec)}
        _spec_path(path).write_text(json.dumps(spec, indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: Path, dim: int | None = None, size: int | None = None) -> ItemIndex:
        """Read an index `save` wrote; `CorruptIndex` when the file and its spec (or the
        `dim` and `size` the caller expects) disagree, or either cannot be read."""
        spec = _read_spec(path)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise CorruptIndex(f"{path}: faiss cannot read it ({_first_line(exc)})") from None
        _check(path, index, spec, dim, size)
        if spec.kind == "ivf":
            faiss.extract_index_ivf(index).make_direct_map()
        return cls(index, spec)

    def _query(self, query: np.ndarray) -> np.ndarray:
        vector = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != self.dim:
            raise ValueError(f"query has {vector.shape[1]} dimensions, the index {self.dim}")
        return _prepared(vector, self.spec.metric)

    def _count(self, allowed: np.ndarray) -> int:
        if allowed.dtype != np.bool_ or allowed.shape != (self.size,):
            raise ValueError(f"allowed must be a bool mask of shape ({self.size},)")
        return int(np.count_nonzero(allowed))

    def _params(self, k: int, bitmap: np.ndarray | None) -> faiss.SearchParameters:
        selector = None if bitmap is None else _faiss.IDSelectorBitmap(bitmap)
        extra: dict[str, Any] = {} if selector is None else {"sel": selector}
        params: faiss.SearchParameters
        if self.kind == "hnsw":
            params = _faiss.SearchParametersHNSW(efSearch=max(self.spec.ef_search, k), **extra)
        elif self.kind == "ivf":
            params = _faiss.SearchParametersIVF(nprobe=self.spec.nprobe, **extra)
        else:
            params = _faiss.SearchParameters(**extra)
        return params

    def _exact(
        self, vector: np.ndarray, k: int, allowed: np.ndarray, allowed_count: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` allowed items, scored exactly."""
        if allowed_count <= self.size * GATHER_SHARE:
            positions = np.flatnonzero(allowed)
            scores = self._rows(positions) @ vector[0]
        else:
            positions = np.arange(self.size)
            scores = np.where(allowed, self._rows(None) @ vector[0], -np.inf)
        best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        ordered = best[np.argsort(-scores[best], kind="stable")]
        return positions[ordered].astype(np.int64), scores[ordered].astype(np.float32)

    def _rows(self, positions: np.ndarray | None) -> np.ndarray:
        """The stored vectors at `positions` (all when None): read in place from a flat or
        HNSW index, reconstructed from an IVF one."""
        if self._stored is not None:
            return self._stored if positions is None else self._stored[positions]
        if positions is None:
            return np.asarray(self._index.reconstruct_n(0, self.size))
        return np.asarray(self._index.reconstruct_batch(positions.astype(np.int64)))


def _stored_rows(index: faiss.Index, spec: IndexSpec) -> np.ndarray | None:
    """A read-only view of the vectors a flat or HNSW index holds (no copy; valid while the
    index lives), or None for IVF, whose vectors sit in per-cell lists."""
    if spec.kind == "ivf" or spec.size == 0:
        return None
    held: Any = index
    flat = _faiss.downcast_index(held.storage) if spec.kind == "hnsw" else held
    raw = _faiss.rev_swig_ptr(flat.get_xb(), spec.size * spec.dim)
    rows: np.ndarray = np.asarray(raw).reshape(spec.size, spec.dim)
    rows.flags.writeable = False
    return rows


def _prepared(vectors: np.ndarray, metric: Metric) -> np.ndarray:
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"vectors must be n x d, not of shape {data.shape}")
    if metric == "cosine":
        norms = np.linalg.norm(data, axis=1, keepdims=True)
        data = np.ascontiguousarray(data / np.maximum(norms, 1e-12), dtype=np.float32)
    return data


def _empty(spec: IndexSpec) -> faiss.Index:
    if spec.kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(spec.dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = spec.ef_construction
        hnsw.hnsw.efSearch = spec.ef_search
        return hnsw
    if spec.kind == "ivf":
        quantizer = faiss.IndexFlatIP(spec.dim)
        ivf = faiss.IndexIVFFlat(quantizer, spec.dim, spec.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.nprobe = spec.nprobe
        return ivf  # faiss's wrapper keeps the quantizer alive with the index
    return faiss.IndexFlatIP(spec.dim)


def _spec_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_spec(path: Path) -> IndexSpec:
    try:
        raw = json.loads(_spec_path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CorruptIndex(f"{_spec_path(path)}: cannot read the index spec ({exc})") from None
    if not isinstance(raw, dict) or raw.pop("format", None) != FORMAT:
        raise CorruptIndex(f"{_spec_path(path)}: not an index spec of format {FORMAT}")
    try:
        spec = IndexSpec(**raw)
    except TypeError as exc:
        raise CorruptIndex(f"{_spec_path(path)}: {exc}") from None
    if spec.kind not in get_args(Kind) or spec.metric not in get_args(Metric):
        raise CorruptIndex(f"{_spec_path(path)}: unknown kind or metric")
    return spec


_FAISS_TYPES: dict[Kind, type] = {
    "flat": faiss.IndexFlat,
    "hnsw": faiss.IndexHNSWFlat,
    "ivf": faiss.IndexIVFFlat,
}


def _check(
    path: Path, index: faiss.Index, spec: IndexSpec, dim: int | None, size: int | None
) -> None:
    problems = []
    if not isinstance(index, _FAISS_TYPES[spec.kind]):
        problems.append(f"holds a {type(index).__name__}, its spec says {spec.kind}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        problems.append("does not search by inner product")
    for name, held, said, expected in (
        ("dimension", index.d, spec.dim, dim),
        ("size", index.ntotal, spec.size, size),
    ):
        if held != said:
            problems.append(f"{name} {held}, its spec says {said}")
        elif expected is not None and held != expected:
            problems.append(f"{name} {held}, expected {expected}")
    if problems:
        raise CorruptIndex(f"{path}: " + "; ".join(problems))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
