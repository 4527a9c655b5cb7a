"""Synthetic item and member factors shaped like ALS's, for index benchmarks.

Real ALS item factors are not uniform noise: items of a category sit together, the
categories themselves span a low-rank subspace (a shop's tastes have few axes), and
popular items have larger norms (ALS fits their many interactions with longer vectors).
Approximate indexes behave very differently on such data than on isotropic noise (on
noise every neighbour is about as far as any other, and no index reaches high recall
cheaply), so the generator reproduces those three traits:

* `clusters` category centres drawn in a `rank`-dimensional subspace of the `dims`;
  category sizes follow a Zipf law (a few large categories, a long tail);
* each item is its centre plus isotropic noise (`spread` of the centre's scale);
* each item's norm is scaled by a log-normal factor (popularity).

Members are mixtures of one to three category centres plus noise, as a folded-in member
who likes a couple of categories is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shape:
    dims: int = 64
    rank: int = 32
    items_per_cluster: int = 40
    spread: float = 1.0
    popularity_sigma: float = 0.4
    zipf: float = 0.8
    offset: float = 0.3

    def cluster_count(self, items: int) -> int:
        return max(16, items // self.items_per_cluster)


@dataclass(frozen=True)
class Factors:
    items: np.ndarray  # float32, items x dims
    category: np.ndarray  # int32, the cluster of each item
    centres: np.ndarray  # float32, clusters x dims


def item_factors(items: int, seed: int = 7, shape: Shape | None = None) -> Factors:
    shape = shape or Shape()
    rng = np.random.default_rng(seed)
    count = shape.cluster_count(items)
    basis = rng.standard_normal((shape.rank, shape.dims)) / np.sqrt(shape.rank)
    centres = rng.standard_normal((count, shape.rank)) @ basis
    # A direction every item shares a little of, as ALS factors do (their mean cosine is
    # positive: popularity leaks into every factor).
    common = rng.standard_normal(shape.dims)
    common *= shape.offset * np.linalg.norm(centres, axis=1).mean() / np.linalg.norm(common)
    centres += common
    weights = 1.0 / np.arange(1, count + 1) ** shape.zipf
    category = rng.choice(count, size=items, p=weights / weights.sum()).astype(np.int32)
    noise = rng.standard_normal((items, shape.dims)) * shape.spread / np.sqrt(shape.dims)
    scale = np.linalg.norm(centres, axis=1).mean()
    vectors = centres[category] + noise * scale
    vectors *= rng.lognormal(0.0, shape.popularity_sigma, size=(items, 1))
    return Factors(
        items=np.ascontiguousarray(vectors, dtype=np.float32),
        category=category,
        centres=np.ascontiguousarray(centres, dtype=np.float32),
    )


def member_factors(factors: Factors, members: int, seed: int = 11) -> np.ndarray:
    """`members` query vectors: each a random mix of 1 to 3 category centres plus noise."""
    rng = np.random.default_rng(seed)
    count, dims = factors.centres.shape
    # Members like the categories items are in: weighted by the categories' sizes.
    sizes = np.bincount(factors.category, minlength=count).astype(np.float64)
    queries = np.zeros((members, dims))
    for row in range(members):
        liked = rng.choice(count, size=int(rng.integers(1, 4)), p=sizes / sizes.sum())
        mix = rng.dirichlet(np.ones(len(liked)))
        queries[row] = mix @ factors.centres[liked]
    scale = np.linalg.norm(factors.centres, axis=1).mean()
    queries += rng.standard_normal((members, dims)) * 0.3 * scale / np.sqrt(dims)
    return np.ascontiguousarray(queries, dtype=np.float32)
