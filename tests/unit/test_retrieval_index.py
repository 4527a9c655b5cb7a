"""The item index: exact below the threshold, HNSW above, filters inside the search, files.

The vectors look like ALS factors (as bench/retrieval/synthetic.py's, smaller): category
centres in a low-rank subspace with a direction they share, items spread around them about
as far as the centres are long, log-normal norms. On uniform noise, or on clusters much
tighter than ALS gives, no approximate index shows the recall it has on real factors.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from services.retrieval.index import CorruptIndex, ItemIndex, build_index, plan

DIMS = 32


def clustered(items: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item vectors, the cluster (category) of each, and the cluster centres."""
    rng = np.random.default_rng(seed)
    clusters = max(8, items // 40)
    centres = rng.standard_normal((clusters, 16)) @ rng.standard_normal((16, DIMS)) / 4.0
    centres += 0.3 * rng.standard_normal(DIMS)  # a direction every item shares a little of
    category = rng.integers(0, clusters, size=items)
    vectors = centres[category] + rng.standard_normal((items, DIMS))
    vectors *= rng.lognormal(0.0, 0.4, size=(items, 1))
    return vectors.astype(np.float32), category, centres


def queries(centres: np.ndarray, count: int, seed: int = 5) -> np.ndarray:
    """Members who like one to three categories."""
    rng = np.random.default_rng(seed)
    liked = [rng.choice(len(centres), size=rng.integers(1, 4)) for _ in range(count)]
    mixed = np.array([centres[picked].mean(axis=0) for picked in liked])
    return (mixed + 0.3 * rng.standard_normal(mixed.shape)).astype(np.float32)


def exact_top(vectors: np.ndarray, query: np.ndarray, k: int, allowed=None) -> list[int]:
    scores = vectors @ query
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    return list(np.argsort(-scores, kind="stable")[:k])


@pytest.fixture(scope="module")
def large() -> tuple[np.ndarray, np.ndarray, np.ndarray, ItemIndex]:
    vectors, category, centres = clustered(50_000)
    return vectors, category, queries(centres, 100), build_index(vectors, "ip", exact_below=10_000)


def test_below_the_threshold_the_search_is_exact() -> None:
    vectors, _, centres = clustered(3_000)
    index = build_index(vectors, "ip")
    query = queries(centres, 1)[0]

    positions, scores = index.search(query, 50)

    assert index.kind == "flat"
    assert list(positions) == exact_top(vectors, query, 50)
    assert np.allclose(scores, vectors[positions] @ query, rtol=1e-5)
    assert list(scores) == sorted(scores, reverse=True)


def test_above_the_threshold_the_index_is_hnsw_sized_from_the_catalog() -> None:
    small, large_, huge = (plan(n, 64, "ip") for n in (25_000, 250_000, 1_000_000))

    assert (small.kind, large_.kind, huge.kind) == ("hnsw", "hnsw", "hnsw")
    assert small.hnsw_m == large_.hnsw_m == huge.hnsw_m == 32
    assert small.ef_search == large_.ef_search == 256 < huge.ef_search == 320
    ivf = plan(250_000, 64, "ip", approximate="ivf")
    assert (ivf.kind, ivf.nlist, ivf.nprobe) == ("ivf", 2000, 500)
    assert plan(19_999, 64, "ip").kind == "flat"


def test_approximate_recall_at_100_is_at_least_095(large) -> None:
    vectors, _, members, index = large
    found = []
    for query in members:
        positions, _ = index.search(query, 100)
        assert len(positions) == 100
        found.append(len(set(positions) & set(exact_top(vectors, query, 100))) / 100)

    assert index.kind == "hnsw"
    assert np.mean(found) >= 0.95, np.mean(found)


def test_a_category_filter_with_exclusions_returns_exactly_k_allowed_items(large) -> None:
    vectors, category, members, index = large
    query = members[0]
    allowed = np.isin(category, np.arange(0, 1_250, 10))  # about a tenth of the items
    excluded = exact_top(vectors, query, 30, allowed)[::2]
    allowed[excluded] = False

    positions, scores = index.search(query, 200, allowed)

    assert len(positions) == 200 == len(set(positions))
    assert allowed[positions].all()
    assert not set(positions) & set(excluded)
    assert list(scores) == sorted(scores, reverse=True)
    # A category mask is answered exactly: a graph walk loses most of its recall to one.
    assert list(positions) == exact_top(vectors, query, 200, allowed)


def test_exclusions_alone_keep_the_approximate_search_and_its_recall(large) -> None:
    vectors, _, members, index = large
    found = []
    for query in members[:20]:
        allowed = np.ones(len(vectors), dtype=bool)
        allowed[exact_top(vectors, query, 40)[::4]] = False

        positions, _ = index.search(query, 100, allowed)

        assert len(positions) == 100 and allowed[positions].all()
        found.append(len(set(positions) & set(exact_top(vectors, query, 100, allowed))) / 100)
    assert np.mean(found) >= 0.95


def test_a_very_selective_filter_still_returns_k_items(large) -> None:
    vectors, _, members, index = large
    rng = np.random.default_rng(1)
    allowed = np.zeros(len(vectors), dtype=bool)
    allowed[rng.choice(len(vectors), size=50, replace=False)] = True  # 0.1% of the items
    query = members[1]

    positions, _ = index.search(query, 20, allowed)
    every, _ = index.search(query, 200, allowed)

    assert list(positions) == exact_top(vectors, query, 20, allowed)
    assert len(every) == 50 and allowed[every].all()


@pytest.mark.parametrize("share", [0.05, 0.5])
def test_a_broad_filter_is_scored_exactly_too(large, share) -> None:
    vectors, _, members, index = large
    allowed = np.random.default_rng(2).random(len(vectors)) < share

    positions, scores = index.search(members[2], 300, allowed)

    assert list(positions) == exact_top(vectors, members[2], 300, allowed)
    assert np.allclose(scores, vectors[positions] @ members[2], rtol=1e-4)


def test_a_graph_walk_that_comes_back_short_is_answered_exactly(large) -> None:
    vectors, _, members, index = large
    allowed = np.ones(len(vectors), dtype=bool)
    allowed[:5_000] = False  # 90% kept: the graph walk runs first

    positions, _ = index.search(members[3], 45_000, allowed)

    # No walk returns 45,000 items of 50,000; the exact answer does.
    assert len(positions) == 45_000 == len(set(positions))
    assert allowed[positions].all()


def test_nothing_allowed_returns_nothing(large) -> None:
    vectors, _, _, index = large

    positions, scores = index.search(vectors[0], 10, np.zeros(len(vectors), dtype=bool))

    assert len(positions) == len(scores) == 0


def test_a_filter_of_the_wrong_shape_is_refused(large) -> None:
    vectors, _, _, index = large

    with pytest.raises(ValueError, match="bool mask"):
        index.search(vectors[0], 10, np.ones(10, dtype=bool))


def test_cosine_indexes_normalise_items_and_queries() -> None:
    vectors, _, _ = clustered(2_000)
    index = build_index(vectors, "cosine")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    positions, scores = index.search(vectors[7] * 5.0, 10)

    assert positions[0] == 7
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(index.reconstruct(7), unit[7], atol=1e-6)
    assert list(positions) == exact_top(unit, unit[7], 10)


@pytest.mark.parametrize("approximate", ["hnsw", "ivf"])
def test_save_and_load_round_trip(tmp_path: Path, approximate) -> None:
    vectors, category, centres = clustered(4_000)
    index = build_index(vectors, "ip", exact_below=1_000, approximate=approximate)
    path = tmp_path / "items.faiss"
    query = queries(centres, 1)[0]
    a_third = category % 3 == 0
    most = np.arange(4_000) % 50 != 0

    index.save(path)
    loaded = ItemIndex.load(path, dim=DIMS, size=4_000)

    assert loaded.spec == index.spec
    assert json.loads((tmp_path / "items.faiss.json").read_text())["kind"] == approximate
    assert np.array_equal(loaded.reconstruct(123), vectors[123])
    for mask in (None, a_third, most):
        assert np.array_equal(loaded.search(query, 50, mask)[0], index.search(query, 50, mask)[0])


def test_a_file_of_another_size_or_dimension_is_refused(tmp_path: Path) -> None:
    vectors, _, _ = clustered(500)
    path = tmp_path / "items.faiss"
    build_index(vectors, "ip").save(path)

    with pytest.raises(CorruptIndex, match="size 500, expected 400"):
        ItemIndex.load(path, size=400)
    with pytest.raises(CorruptIndex, match="dimension 32, expected 48"):
        ItemIndex.load(path, dim=48)


def test_a_file_that_disagrees_with_its_spec_is_refused(tmp_path: Path) -> None:
    vectors, _, _ = clustered(500)
    path = tmp_path / "items.faiss"
    build_index(vectors, "ip").save(path)
    # Another catalog's index written over the file, its spec left as it was.
    other = faiss.IndexFlatIP(DIMS)
    other.add(vectors[:300])
    faiss.write_index(other, str(path))

    with pytest.raises(CorruptIndex, match="size 300, its spec says 500"):
        ItemIndex.load(path)


def test_a_truncated_or_missing_file_is_refused(tmp_path: Path) -> None:
    vectors, _, _ = clustered(500)
    path = tmp_path / "items.faiss"
    build_index(vectors, "ip").save(path)
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(CorruptIndex, match="faiss cannot read it"):
        ItemIndex.load(path)
    (tmp_path / "items.faiss.json").unlink()
    with pytest.raises(CorruptIndex, match="cannot read the index spec"):
        ItemIndex.load(path)


def test_reconstruct_outside_the_index_is_an_index_error() -> None:
    index = build_index(clustered(100)[0], "ip")

    with pytest.raises(IndexError):
        index.reconstruct(100)
