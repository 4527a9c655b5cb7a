"""Rankers by name: the built-in ones and those installed packages add through an entry point.

A package registers a ranker by naming, in its metadata, a callable that builds it:

    [project.entry-points."recofleet.rankers"]
    reverse = "my_rankers:build_reverse"

The callable takes a `RankerInputs` and returns a `Ranker`. If it needs a trained artifact,
it says so with an attribute `trained = True` on the callable: the ranking service then
builds it on a version folder from the model store (`models/rankers/<name>/`), and only a
version that loads and answers the probe (services/ranking/probe.py) is ever activated.

A plug-in that fails to import is listed with the reason instead of stopping the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from services.ranking.rankers import BlendRanker, Ranker
from services.ranking.settings import RankingSettings

ENTRY_POINT_GROUP = "recofleet.rankers"
BUILT_IN = "built-in"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerInputs:
    """What a ranker is built from."""

    settings: RankingSettings
    # The version's folder in the model store, for a trained ranker; None otherwise.
    artifact: Path | None = None
    # In-memory state the ranking service keeps from the bus (item popularity and the
    # like), for rankers whose features need it; None where nothing feeds it.
    features: Any = None


RankerBuild = Callable[[RankerInputs], Ranker]


@dataclass(frozen=True)
class RankerKind:
    name: str
    # "built-in", or the distribution whose entry point registered it.
    origin: str
    build: RankerBuild | None
    trained: bool = False
    # Why it cannot be built (a plug-in that failed to import), else empty.
    broken: str = ""


def _blend(inputs: RankerInputs) -> Ranker:
    return BlendRanker(inputs.settings.blend)


def _ltr(inputs: RankerInputs) -> Ranker:
    # Imported here: LightGBM takes over a second to import, which a fleet that never
    # serves the learned ranker need not pay.
    from services.ranking.ltr import LtrRanker

    if inputs.artifact is None:
        raise ValueError("the ltr ranker is built from a trained version")
    return LtrRanker.load(inputs.artifact, inputs.features)


BUILT_INS: dict[str, RankerKind] = {
    "blend": RankerKind("blend", BUILT_IN, _blend),
    "ltr": RankerKind("ltr", BUILT_IN, _ltr, trained=True),
}


def register_built_in(kind: RankerKind) -> None:
    """Add a ranker that ships with recofleet (at import of its module)."""
    BUILT_INS[kind.name] = kind


def discover() -> dict[str, RankerKind]:
    """Every ranker: the built-in ones, then the installed plug-ins (a plug-in cannot take
    the name of a built-in one)."""
    kinds = dict(BUILT_INS)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        if point.name in kinds:
            log.warning(
                "ranker plug-in %s (%s) ignored: the name is taken by a %s ranker",
                point.name,
                point.value,
                kinds[point.name].origin,
            )
            continue
        kinds[point.name] = _plugged(point)
    return kinds


def _plugged(point: EntryPoint) -> RankerKind:
    origin = point.dist.name if point.dist is not None else point.value
    try:
        build = point.load()
    except Exception as exc:  # a plug-in's import error must not stop the service
        log.warning("ranker plug-in %s (%s) failed to load: %s", point.name, point.value, exc)
        return RankerKind(point.name, origin, None, broken=f"failed to import: {exc}")
    if not callable(build):
        return RankerKind(point.name, origin, None, broken=f"{point.value} is not callable")
    return RankerKind(point.name, origin, build, trained=bool(getattr(build, "trained", False)))
