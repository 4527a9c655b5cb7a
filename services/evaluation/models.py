"""Every model `recofleet evaluate` can run, by name: the baselines and the fleet's own models."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from services.evaluation.baselines import BASELINES, Model

BASE_MODELS = ("popularity", "trending", "buy_again", "item_knn", "ease", "als", "served")
# The served candidates re-ranked: by the blend ranker, and by the learned ranker where
# LightGBM is installed (where it is but does not import, the report says why it skipped).
RERANKED = ("served-blend", "served-ltr")
LTR_MODEL = "served-ltr"


def default_models() -> tuple[str, ...]:
    """What `recofleet evaluate` runs without `--models`."""
    # Only looked up, not imported: importing LightGBM takes a second (scikit-learn,
    # pandas) and every `recofleet` command builds this parser.
    with_ltr = importlib.util.find_spec("lightgbm") is not None
    return (*BASE_MODELS, *(n for n in RERANKED if with_ltr or n != LTR_MODEL))


DEFAULT_MODELS = default_models()


def models_by_name() -> dict[str, Callable[[], Model]]:
    """Name -> factory of every model available here (baselines, then the fleet's).

    `served`, `served-blend` and `served-ltr` of one registry share a single served model:
    its candidates are asked once and re-ranked, never asked again per ranker.
    """
    registry: dict[str, Callable[[], Model]] = dict(BASELINES)
    registry.update(_fleet_models())
    return registry


def _fleet_models() -> dict[str, Callable[[], Model]]:
    # Imported when asked for: the fleet's models pull in implicit, faiss and SQLAlchemy.
    from services.evaluation.fleet import (
        AlsModel,
        ServedBlendModel,
        ServedLtrModel,
        ServedModel,
    )

    shared: list[ServedModel] = []

    def served() -> ServedModel:
        if not shared:
            shared.append(ServedModel())
        return shared[0]

    return {
        "als": AlsModel,
        "served": served,
        "served-blend": lambda: ServedBlendModel(served()),
        "served-ltr": lambda: ServedLtrModel(served()),
    }
