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
from services.ranking.domain import ranker_store
from services.ranking.settings import RankingSettings

LTR = "ltr"


@dataclass(frozen=True)
class Trained:
    version: str
    meta: dict[str, Any]
    seconds: float


def train_ranker(
    fleet: FleetSettings, settings: RankingSettings, events: Sequence[AnyEvent]
) -> Trained:
    """Train the learned ranker on `events` (oldest first) and publish it as a version."""
    from services.ranking.ltr import train_ltr

    started = time.perf_counter()
    store = ranker_store(fleet, LTR, settings)
    now = fleet.clock().now()

    def build(folder: Path) -> dict[str, Any]:
        meta = train_ltr(events, folder, now=now, num_threads=settings.train_threads)
        meta.setdefault("trained_at", now.isoformat())
        return meta

    version = store.publish(build)
    return Trained(version, store.meta(version), time.perf_counter() - started)
