"""Every model `recofleet evaluate` can run, by name: the baselines and the fleet's own models."""

from __future__ import annotations

from collections.abc import Callable

from services.evaluation.baselines import BASELINES, Model

DEFAULT_MODELS = ("popularity", "trending", "buy_again", "item_knn", "ease", "als", "served")


def models_by_name() -> dict[str, Callable[[], Model]]:
    """Name -> factory of every model available here (baselines, then the fleet's)."""
    registry: dict[str, Callable[[], Model]] = dict(BASELINES)
    registry.update(_fleet_models())
    return registry


def _fleet_models() -> dict[str, Callable[[], Model]]:
    # Imported when asked for: the fleet's models pull in implicit, faiss and SQLAlchemy.
    from services.evaluation.fleet import AlsModel, ServedModel

    return {"als": AlsModel, "served": ServedModel}
