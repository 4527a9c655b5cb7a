"""`recofleet train-ranker`: the learned ranker trained on what the bus holds, as a version.

Training writes a new version to the model store (`models/rankers/ltr/`) and changes
nothing that is served: the version answers once it is activated
(`POST /v1/models/ltr/activate`) or a running experiment's variant names it, and both probe
it first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.events import AnyEvent
from services.common.settings import FleetSettings
from services.ranking.settings import RankingSettings
from services.retrieval.model_store import LocalModelStore

LTR = "ltr"


@dataclass(frozen=True)
class Trained:
    version: str
    meta: dict[str, Any]
    seconds: float


def ranker_models(fleet: FleetSettings, settings: RankingSettings, name: str = LTR) -> Path:
    return fleet.models_dir / "rankers" / name


def train_ranker(
    fleet: FleetSettings, settings: RankingSettings, events: Sequence[AnyEvent]
) -> Trained:
    """Train the learned ranker on `events` (oldest first) and publish it as a version."""
    from services.ranking.ltr import train_ltr

    started = time.perf_counter()
    store = LocalModelStore(ranker_models(fleet, settings), keep=settings.keep_versions)
    now = fleet.clock().now()

    def build(folder: Path) -> dict[str, Any]:
        meta = train_ltr(events, folder, now=now, num_threads=settings.train_threads)
        meta.setdefault("trained_at", now.isoformat())
        return meta

    version = store.publish(build)
    return Trained(version, store.meta(version), time.perf_counter() - started)
