"""The item index in process: build, memory, recall against exact search, search latency.

Searches run one at a time on one thread (one OpenMP and one BLAS thread), as a serving
process should: with more, each single-vector search pays for waking threads it cannot use.
The build runs on every core, as the trainer's does.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from bench.fleet import percentile, say
from bench.profiles import rss_mib
from bench.retrieval.synthetic import Factors, item_factors, member_factors
from services.retrieval.index import Approximate, ItemIndex, build_index

RECALL_AT = 100


def category_mask(factors: Factors, share: float, seed: int = 0) -> np.ndarray:
    """Whole categories, drawn at random, until they hold `share` of the items."""
    rng = np.random.default_rng(seed)
    sizes = np.bincount(factors.category)
    chosen: list[int] = []
    total = 0
    for category in rng.permutation(len(sizes)):
        if total >= share * len(factors.category):
            break
        chosen.append(int(category))
        total += int(sizes[category])
    return np.isin(factors.category, chosen)


def exact_top(items: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None) -> list:
    """The true best `k` per query (filtered by `mask`), in blocks to bound memory."""
    truth: list[set[int]] = []
    for start in range(0, len(queries), 100):
        scores = queries[start : start + 100] @ items.T
        if mask is not None:
            scores[:, ~mask] = -np.inf
        best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        truth.extend(set(row.tolist()) for row in best)
    return truth


def timed_searches(
    index: ItemIndex, queries: np.ndarray, k: int, mask: np.ndarray | None, warmup: int = 50
) -> tuple[list[float], list[np.ndarray]]:
    for query in queries[:warmup]:
        index.search(query, k, mask)
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        positions, _ = index.search(query, k, mask)
        times.append((time.perf_counter() - started) * 1000)
        found.append(positions)
    return times, found


def case(
    index: ItemIndex,
    items: np.ndarray,
    queries: np.ndarray,
    k: int,
    mask: np.ndarray | None,
) -> dict[str, Any]:
    times, found = timed_searches(index, queries, k, mask)
    truth = exact_top(items, queries, RECALL_AT, mask)
    recall = [
        len(set(f[:RECALL_AT].tolist()) & t) / RECALL_AT for f, t in zip(found, truth, strict=True)
    ]
    ordered = sorted(times)
    return {
        "queries": len(queries),
        "k": k,
        "allowed_share": 1.0 if mask is None else float(mask.mean()),
        "recall@100": float(np.mean(recall)),
        "min_recall@100": float(np.min(recall)),
        "short_answers": sum(len(f) < k for f in found),
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1],
    }


def measure(
    items: int, queries: int, k: int, approximate: Approximate, exact_below: int, seed: int
) -> dict[str, Any]:
    say(f"in process: {items:,} synthetic items, {queries:,} member queries")
    factors = item_factors(items, seed=seed)
    members = member_factors(factors, queries, seed=seed + 1)
    gc.collect()
    before = rss_mib() or 0.0
    started = time.perf_counter()
    index = build_index(factors.items, "ip", exact_below, approximate)
    build_s = time.perf_counter() - started
    after = rss_mib() or 0.0
    say(f"in process: built {index.kind} in {build_s:.1f}s; searching")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "items.faiss"
        index.save(path)
        file_bytes = path.stat().st_size
    excluded = np.ones(items, dtype=bool)
    excluded[np.random.default_rng(seed).choice(items, size=min(100, items), replace=False)] = False
    masks = {
        "unfiltered": None,
        "100 items excluded": excluded,
        "category mask ~10%": category_mask(factors, 0.10, seed),
        "category mask ~1%": category_mask(factors, 0.01, seed),
    }
    omp_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1):
            cases = {
                name: case(index, factors.items, members, k, mask) for name, mask in masks.items()
            }
    finally:
        faiss.omp_set_num_threads(omp_threads)
    return {
        "items": items,
        "dims": factors.items.shape[1],
        "categories": int(factors.category.max()) + 1,
        "spec": index.spec.__dict__,
        "exact_below": exact_below,
        "build_s": build_s,
        "build_threads": omp_threads,
        "rss_growth_mib": after - before,
        "vectors_mib": factors.items.nbytes / 2**20,
        "file_mib": file_bytes / 2**20,
        "cases": cases,
    }
