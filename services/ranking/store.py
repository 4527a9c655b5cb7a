"""What ranking keeps: which ranker answers outside experiments, and the experiments.

Both are small and read by every replica every fraction of a second (the servicer keeps
them in memory and refreshes), so an activation or a start made on one replica takes
effect on all within the refresh interval.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
    update,
)

from services.common.db import make_engine
from services.common.migrations import upgrade
from services.ranking.experiments import Experiment, Status, Variant


@dataclass(frozen=True)
class Activation:
    ranker: str
    # Empty for a ranker that is not trained.
    version: str
    activated_at: datetime
    # "activated", "experiment <id> won", ...
    reason: str

    @property
    def label(self) -> str:
        return f"{self.ranker}@{self.version}" if self.version else self.ranker


class StaleExperiment(RuntimeError):
    """Another replica changed the experiment since it was read: read it again."""


class RankingStore(abc.ABC):
    @abc.abstractmethod
    def activate(self, activation: Activation) -> None:
        """Record that `activation` is the active ranker from now on."""

    @abc.abstractmethod
    def active(self) -> Activation | None:
        """The newest activation; None before the first (the settings' default answers)."""

    @abc.abstractmethod
    def activations(self, limit: int = 20) -> list[Activation]:
        """The newest activations first."""

    @abc.abstractmethod
    def create_experiment(self, experiment: Experiment) -> None: ...

    @abc.abstractmethod
    def save_experiment(self, experiment: Experiment, revision: int) -> int:
        """Replace the experiment read at `revision`; the new revision. `StaleExperiment`
        when it changed meanwhile, so two replicas cannot both start one."""

    @abc.abstractmethod
    def experiment(self, experiment_id: str) -> tuple[Experiment, int] | None:
        """The experiment and its revision."""

    @abc.abstractmethod
    def experiments(self) -> list[Experiment]:
        """Every experiment, oldest first."""

    @abc.abstractmethod
    def close(self) -> None: ...


metadata = MetaData()
activations = Table(
    "ranker_activations",
    metadata,
    Column("activation_id", Integer, primary_key=True, autoincrement=True),
    Column("ranker", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("activated_at", DateTime(timezone=True), nullable=False),
    Column("reason", String(200), nullable=False),
)
experiments = Table(
    "experiments",
    metadata,
    Column("experiment_id", String(64), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("placement", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("stopped_at", DateTime(timezone=True), nullable=True),
    Column("winner", String(64), nullable=False),
    Column("revision", Integer, nullable=False),
)
Index("ix_experiments_placement", experiments.c.placement, experiments.c.status)


class SqlRankingStore(RankingStore):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        upgrade(engine, "ranking")

    @classmethod
    def from_url(cls, url: str) -> SqlRankingStore:
        return cls(make_engine(url))

    def activate(self, activation: Activation) -> None:
        row = {
            "ranker": activation.ranker,
            "version": activation.version,
            "activated_at": activation.activated_at,
            "reason": activation.reason[:200],
        }
        with self._engine.begin() as conn:
            conn.execute(insert(activations).values(row))

    def active(self) -> Activation | None:
        newest = self.activations(limit=1)
        return newest[0] if newest else None

    def activations(self, limit: int = 20) -> list[Activation]:
        query = select(activations).order_by(activations.c.activation_id.desc()).limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            Activation(r["ranker"], r["version"], _utc(r["activated_at"]), r["reason"])
            for r in rows
        ]

    def create_experiment(self, experiment: Experiment) -> None:
        with self._engine.begin() as conn:
            conn.execute(insert(experiments).values(_row(experiment, revision=1)))

    def save_experiment(self, experiment: Experiment, revision: int) -> int:
        query = (
            update(experiments)
            .where(experiments.c.experiment_id == experiment.experiment_id)
            .where(experiments.c.revision == revision)
            .values(_row(experiment, revision + 1))
        )
        with self._engine.begin() as conn:
            if conn.execute(query).rowcount != 1:
                raise StaleExperiment(
                    f"experiment {experiment.experiment_id} changed meanwhile: read it again"
                )
        return revision + 1

    def experiment(self, experiment_id: str) -> tuple[Experiment, int] | None:
        query = select(experiments).where(experiments.c.experiment_id == experiment_id)
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return (_experiment(row), int(row["revision"])) if row else None

    def experiments(self) -> list[Experiment]:
        query = select(experiments).order_by(experiments.c.created_at, experiments.c.experiment_id)
        with self._engine.connect() as conn:
            return [_experiment(row) for row in conn.execute(query).mappings()]

    def close(self) -> None:
        self._engine.dispose()


def _row(experiment: Experiment, revision: int) -> dict[str, Any]:
    definition = {
        "variants": [
            {
                "name": v.name,
                "ranker": v.ranker,
                "ranker_version": v.ranker_version,
                "share": v.share,
            }
            for v in experiment.variants
        ],
        "primary_metric": experiment.primary_metric,
        "guardrails": list(experiment.guardrails),
        "control": experiment.control,
        "has_run": experiment.has_run,
    }
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "placement": experiment.placement,
        "status": experiment.status.value,
        "definition": definition,
        "created_at": experiment.created_at or datetime.now(UTC),
        "started_at": experiment.started_at,
        "stopped_at": experiment.stopped_at,
        "winner": experiment.winner,
        "revision": revision,
    }


def _experiment(row: Any) -> Experiment:
    definition = row["definition"]
    return Experiment(
        experiment_id=row["experiment_id"],
        name=row["name"],
        placement=row["placement"],
        variants=tuple(
            Variant(v["name"], v["ranker"], float(v["share"]), v.get("ranker_version", ""))
            for v in definition["variants"]
        ),
        primary_metric=definition.get("primary_metric", "ctr"),
        guardrails=tuple(definition.get("guardrails", ())),
        status=Status(row["status"]),
        created_at=_utc(row["created_at"]),
        started_at=_utc(row["started_at"]) if row["started_at"] else None,
        stopped_at=_utc(row["stopped_at"]) if row["stopped_at"] else None,
        winner=row["winner"],
        control=definition.get("control", ""),
        has_run=bool(definition.get("has_run", False)),
    )


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for what was stored in UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
