"""A trained retrieval model: what every candidate source reads, in memory and on disk.

- ALS item factors, with FAISS indexes over them (inner product to place a member,
  cosine for "similar items"); members are folded in from their latest interactions
  against the fixed item factors, so the model files keep no member data (no user
  factors, no member ids) and erasing a member never touches a model (docs/erasure.md);
- popularity (members who touched an item) and trending (the same, decayed by age);
- bought together: per item its strongest co-occurring items, from shared baskets;
- the calibration of every source (services/retrieval/fusion.py).

`load` checks every file against the model's own description and raises `CorruptModel`
with what is wrong, so a server keeps serving the version it has (docs/retrieval.md).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from implicit.cpu.als import AlternatingLeastSquares
from scipy.sparse import csr_matrix, load_npz, save_npz

from services.retrieval.fusion import Calibration
from services.retrieval.index import CorruptIndex, ItemIndex

FORMAT = 2
ALS_FILE = "als.npz"
ITEMS_FILE = "items.json"
POPULARITY_FILE = "popularity.npy"
TRENDING_FILE = "trending.npy"
TOGETHER_FILE = "together.npz"
CALIBRATION_FILE = "calibration.json"
SERVING_FILE = "serving.json"
IP_INDEX_FILE = "items_ip.faiss"
COSINE_INDEX_FILE = "items_cosine.faiss"


class CorruptModel(ValueError):
    """A model version that cannot be served: missing, unreadable or inconsistent files."""


@dataclass(frozen=True)
class Artifacts:
    """A model's contents, as training builds them and serving reads them."""

    item_ids: list[str]
    als: AlternatingLeastSquares
    popularity: np.ndarray
    trending: np.ndarray
    together: csr_matrix
    ip_index: ItemIndex
    cosine_index: ItemIndex
    calibration: Calibration
    # Summed weights are divided by this (their median in the training data) before the
    # confidence transform, so that alpha means the same on purchase-only data as on
    # view-only data; serving folds members in with the same scale.
    weight_scale: float = 1.0
    confidence: str = "log"
    # Buy again's decay of a purchase with age, chosen on held-out data at training.
    buy_again_half_life_days: float = 90.0

    def save(self, folder: Path) -> None:
        save_item_side(self.als, folder / ALS_FILE)
        (folder / ITEMS_FILE).write_text(json.dumps(self.item_ids))
        np.save(folder / POPULARITY_FILE, self.popularity)
        np.save(folder / TRENDING_FILE, self.trending)
        save_npz(folder / TOGETHER_FILE, self.together)
        (folder / CALIBRATION_FILE).write_text(json.dumps(self.calibration.to_json()))
        serving = {
            "scale": self.weight_scale,
            "form": self.confidence,
            "buy_again_half_life_days": self.buy_again_half_life_days,
        }
        (folder / SERVING_FILE).write_text(json.dumps(serving))
        self.ip_index.save(folder / IP_INDEX_FILE)
        self.cosine_index.save(folder / COSINE_INDEX_FILE)


class RetrievalModel:
    def __init__(self, version: str, meta: dict[str, Any], parts: Artifacts) -> None:
        self.version = version
        self.meta = meta
        self.parts = parts
        self.item_ids = parts.item_ids
        self.position = {item_id: i for i, item_id in enumerate(parts.item_ids)}
        self.by_popularity = np.argsort(-parts.popularity, kind="stable")
        self.by_trending = np.argsort(-parts.trending, kind="stable")
        factors = np.asarray(parts.als.item_factors, dtype=np.float64)
        self._factors = factors
        # YᵀY + λI, the part of every member's solve that is the same for all: computed
        # once here (implicit's recalculate_user recomputes it per call, O(items·f²)).
        self._gram = factors.T @ factors + parts.als.regularization * np.eye(factors.shape[1])

    @classmethod
    def load(cls, folder: Path) -> RetrievalModel:
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("format") != FORMAT:
                raise CorruptModel(
                    f"{folder.name}: format {meta.get('format')!r}, this server reads {FORMAT}; "
                    "retrain with this release"
                )
            return cls(meta["version"], meta, _read(folder, meta))
        except CorruptModel:
            raise
        except CorruptIndex as exc:
            raise CorruptModel(str(exc)) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptModel(f"{folder.name}: {type(exc).__name__}: {exc}") from None

    @property
    def item_count(self) -> int:
        return len(self.item_ids)

    def popularity(self, item_id: str) -> float:
        position = self.position.get(item_id)
        return float(self.parts.popularity[position]) if position is not None else 0.0

    def confidence(self, summed_weight: float) -> float:
        """What training fed ALS for a member and item with this summed event weight."""
        scaled = summed_weight / self.parts.weight_scale
        return math.log1p(scaled) if self.parts.confidence == "log" else scaled

    def fold_in(self, weights: dict[int, float]) -> np.ndarray:
        """The member vector for summed event weights per item position: the least-squares
        solve ALS makes for a member with the item factors fixed, as implicit makes it
        (confidence c = alpha·f(w) per item: Σ c·y on the right, (c - 1)·y·yᵀ added to
        YᵀY + λI on the left)."""
        positions = np.fromiter(weights.keys(), np.int64, len(weights))
        values = np.fromiter(map(self.confidence, weights.values()), np.float64, len(weights))
        confidence = self.parts.als.alpha * values
        rows = self._factors[positions]
        left = self._gram + (rows.T * (confidence - 1.0)) @ rows
        right = confidence @ rows
        return np.linalg.solve(left, right).astype(np.float32)


def _read(folder: Path, meta: dict[str, Any]) -> Artifacts:
    item_ids = json.loads((folder / ITEMS_FILE).read_text())
    size, factors = len(item_ids), int(meta["factors"])
    if size != meta["items"]:
        raise CorruptModel(f"{folder.name}: {size} item ids, meta.json says {meta['items']}")
    als = AlternatingLeastSquares.load(str(folder / ALS_FILE))
    if als.item_factors is None or als.item_factors.shape != (size, factors):
        shape = None if als.item_factors is None else als.item_factors.shape
        raise CorruptModel(f"{folder.name}: item factors {shape}, expected {(size, factors)}")
    parts = Artifacts(
        item_ids=item_ids,
        als=als,
        popularity=_vector(folder / POPULARITY_FILE, size),
        trending=_vector(folder / TRENDING_FILE, size),
        together=load_npz(folder / TOGETHER_FILE).tocsr(),
        ip_index=ItemIndex.load(folder / IP_INDEX_FILE, dim=factors, size=size),
        cosine_index=ItemIndex.load(folder / COSINE_INDEX_FILE, dim=factors, size=size),
        calibration=Calibration.from_json(json.loads((folder / CALIBRATION_FILE).read_text())),
        **_serving(folder / SERVING_FILE),
    )
    if parts.together.shape != (size, size):
        raise CorruptModel(f"{folder.name}: bought-together table {parts.together.shape}")
    return parts


def _serving(path: Path) -> dict[str, Any]:
    found = json.loads(path.read_text())
    scale, form = float(found["scale"]), found["form"]
    half_life = float(found["buy_again_half_life_days"])
    if not scale > 0 or form not in ("log", "linear") or not half_life > 0:
        raise CorruptModel(
            f"{path.parent.name}/{path.name}: scale {scale}, form {form!r}, half-life {half_life}"
        )
    return {"weight_scale": scale, "confidence": form, "buy_again_half_life_days": half_life}


def _vector(path: Path, size: int) -> np.ndarray:
    values = np.load(path, allow_pickle=False)
    if values.shape != (size,):
        raise CorruptModel(f"{path.parent.name}/{path.name}: shape {values.shape}, not ({size},)")
    return np.asarray(values, dtype=np.float32)


def save_item_side(als: AlternatingLeastSquares, path: Path) -> None:
    """Save the model without its user factors (one row per member trained on): serving
    recomputes a member's factors from their interactions (`recalculate_user`), which reads
    the item factors and settings only. implicit saves no attribute that is None."""
    user_factors = als.user_factors
    als.user_factors = None
    try:
        als.save(str(path))
    finally:
        als.user_factors = user_factors
