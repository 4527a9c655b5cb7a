"""Which ranker answers a request: the active one, or the variant of a running experiment.

`RankerBook` keeps what every request needs in memory (the active ranker, the running
experiments, the rankers built so far) and reads the store again every refresh interval, so
that what another replica changed takes effect here within it. Changes go to the store
first, then to memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.clock import Clock
from services.common.metrics import model_served
from services.common.settings import FleetSettings
from services.ranking.experiments import (
    DEFAULT_VARIANT,
    Experiment,
    NotAllowed,
    Status,
    Variant,
    new_experiment,
    running_for,
)
from services.ranking.probe import ProbeResult, RankerRefused, probe
from services.ranking.rankers import Ranker
from services.ranking.registry import RankerInputs, RankerKind
from services.ranking.settings import RankingSettings
from services.ranking.store import Activation, RankingStore
from services.retrieval.model_store import LocalModelStore, ModelStore, open_model_store

log = logging.getLogger(__name__)


def rankers_dir(fleet: FleetSettings) -> Path:
    """Where the trained rankers' versions live in a local model store, a folder per ranker."""
    return fleet.models_dir / "rankers"


def ranker_store(rankers: FleetSettings | Path, name: str, settings: RankingSettings) -> ModelStore:
    """The versions of the trained ranker `name`: in the fleet's model store (its folders or
    its bucket), or in a folder of rankers of one's own (`rankers_dir`, a test's folder)."""
    if isinstance(rankers, Path):
        return LocalModelStore(rankers / name, keep=settings.keep_versions)
    return open_model_store(rankers, f"rankers/{name}", keep=settings.keep_versions)


class UnknownRanker(LookupError):
    """No ranker, version or experiment of that name."""


@dataclass(frozen=True)
class Choice:
    ranker: Ranker
    # "name" or "name@version": what the answer's `model` says.
    label: str
    variant: str = DEFAULT_VARIANT
    experiment_id: str = ""


@dataclass(frozen=True)
class Activated:
    activation: Activation
    probe: ProbeResult


class RankerBook:
    def __init__(
        self,
        kinds: Mapping[str, RankerKind],
        store: RankingStore,
        settings: RankingSettings,
        rankers: FleetSettings | Path,
        clock: Clock,
        features: object = None,
    ) -> None:
        self._kinds = dict(kinds)
        self._store = store
        self._settings = settings
        self._rankers = rankers
        self._clock = clock
        self._features = features
        self._built: dict[tuple[str, str], Ranker] = {}
        self._lock = threading.Lock()
        if settings.default_ranker not in self._kinds:
            raise ValueError(
                f"unknown default ranker '{settings.default_ranker}'; known: {sorted(self._kinds)}"
            )
        self._active: Activation | None = None
        self._experiments: list[Experiment] = []
        self.refresh()

    @property
    def kinds(self) -> Mapping[str, RankerKind]:
        return self._kinds

    def refresh(self) -> None:
        """Read the active ranker and the experiments again (what other replicas changed)."""
        self._active = self._store.active()
        self._experiments = self._store.experiments()
        if self._active is not None:
            model_served("ranker", self._active.label)

    # Serving -------------------------------------------------------------------------

    def choose(self, member_id: str, placement: str, asked: str = "") -> Choice:
        """The ranker for this request: the one asked for by name, else the member's variant
        of the experiment running on the placement, else the active ranker."""
        if asked:
            return self._choice(asked, "")
        experiment = running_for(self._experiments, placement) if member_id else None
        variant = experiment.assign(member_id) if experiment else None
        if experiment is not None and variant is not None:
            try:
                choice = self._choice(variant.ranker, variant.ranker_version)
            except (UnknownRanker, RankerRefused) as exc:
                # Probed at start, so only a version deleted since can get here: the member
                # gets the active ranker and is not counted in the experiment.
                log.error(
                    "experiment %s: variant %s unusable: %s",
                    experiment.experiment_id,
                    variant.name,
                    exc,
                )
            else:
                return Choice(choice.ranker, choice.label, variant.name, experiment.experiment_id)
        return self.active_choice()

    def active_choice(self) -> Choice:
        active = self._active
        if active is not None:
            try:
                return self._choice(active.ranker, active.version)
            except (UnknownRanker, RankerRefused) as exc:
                log.error(
                    "active ranker %s unusable (%s): using %s",
                    active.label,
                    exc,
                    self._settings.default_ranker,
                )
        return self._choice(self._settings.default_ranker, "")

    def _choice(self, name: str, version: str) -> Choice:
        ranker, version = self._ranker(name, version)
        return Choice(ranker, f"{name}@{version}" if version else name)

    def _ranker(self, name: str, version: str) -> tuple[Ranker, str]:
        kind = self._kind(name)
        if kind.trained:
            version = version or self._current_version(kind)
        key = (name, version)
        built = self._built.get(key)
        if built is None:
            with self._lock:
                built = self._built.get(key) or self._build(kind, version)
                self._built[key] = built
        return built, version

    def _kind(self, name: str) -> RankerKind:
        kind = self._kinds.get(name)
        if kind is None:
            raise UnknownRanker(f"unknown ranker '{name}'; known: {sorted(self._kinds)}")
        if kind.build is None:
            raise RankerRefused(f"ranker '{name}' cannot be built: {kind.broken}")
        return kind

    def _current_version(self, kind: RankerKind) -> str:
        current = self.model_store(kind.name).current()
        if current is None:
            raise RankerRefused(
                f"ranker '{kind.name}' has no trained version yet (recofleet train-ranker)"
            )
        return current

    def _build(self, kind: RankerKind, version: str) -> Ranker:
        artifact = None
        if kind.trained:
            store = self.model_store(kind.name)
            if version not in store.versions():
                raise UnknownRanker(f"ranker '{kind.name}' has no version {version!r}")
            artifact = store.path(version)
        assert kind.build is not None
        inputs = RankerInputs(self._settings, artifact, self._features)
        try:
            return kind.build(inputs)
        except Exception as exc:  # a foreign model's load error is a refusal, not a crash
            raise RankerRefused(f"failed to load: {exc}") from exc

    def model_store(self, name: str) -> ModelStore:
        return ranker_store(self._rankers, name, self._settings)

    # Activation ----------------------------------------------------------------------

    def activate(self, name: str, version: str = "", reason: str = "activated") -> Activated:
        """Load and probe the ranker, then make it the active one; `RankerRefused` (and the
        active ranker stays) when it fails."""
        kind = self._kind(name)
        if kind.trained and not version:
            version = self._current_version(kind)
        result = self.check(name, version)
        if kind.trained:
            self.model_store(name).activate(version)
        activation = Activation(name, version, self._clock.now(), reason)
        self._store.activate(activation)
        self._active = activation
        return Activated(activation, result)

    def check(self, name: str, version: str) -> ProbeResult:
        """Build the ranker afresh and probe it; records a trained version's refusal."""
        kind = self._kind(name)
        try:
            ranker = self._build(kind, version)
            result = probe(ranker, self._settings.probe_budget_ms)
        except RankerRefused as exc:
            if kind.trained and version:
                self.model_store(name).refuse(version, str(exc))
            raise
        with self._lock:
            self._built[(name, version)] = ranker
        return result

    def active(self) -> Activation | None:
        return self._active

    # Experiments ---------------------------------------------------------------------

    def create(
        self,
        *,
        name: str,
        placement: str,
        variants: Iterable[Variant],
        primary_metric: str = "",
        guardrails: Iterable[str] = (),
        control: str = "",
    ) -> Experiment:
        experiment = new_experiment(
            name=name,
            placement=placement,
            variants=variants,
            known_rankers=self._kinds,
            primary_metric=primary_metric,
            guardrails=guardrails,
            control=control,
            created_at=self._clock.now(),
        )
        self._store.create_experiment(experiment)
        self.refresh()
        return experiment

    def experiment(self, experiment_id: str) -> Experiment:
        return self._read(experiment_id)[0]

    def experiments(self) -> list[Experiment]:
        return self._store.experiments()

    def set_shares(self, experiment_id: str, shares: Mapping[str, float]) -> Experiment:
        return self._change(experiment_id, lambda e: e.with_shares(shares))

    def change(self, experiment_id: str, action: str, winner: str = "") -> Experiment:
        """start, pause or stop; starting probes every variant's ranker first, and stopping
        with a winner activates its ranker."""
        experiment, _ = self._read(experiment_id)
        if action == "start":
            self._ready_to_start(experiment)
        at = self._clock.now()
        changed = self._change(experiment_id, lambda e: e.changed(action, at, winner))
        if action == "stop" and winner:
            chosen = changed.variant(winner)
            assert chosen is not None
            self.activate(
                chosen.ranker,
                chosen.ranker_version,
                reason=f"winner {winner} of experiment {experiment_id}",
            )
        return changed

    def _ready_to_start(self, experiment: Experiment) -> None:
        others = [
            e.experiment_id
            for e in self._store.experiments()
            if e.placement == experiment.placement
            and e.status is Status.RUNNING
            and e.experiment_id != experiment.experiment_id
        ]
        if others:
            raise NotAllowed(
                f"experiment {others[0]} is already running on placement "
                f"'{experiment.placement}': a member sees one variant per placement; pause or "
                "stop it first"
            )
        for variant in experiment.variants:
            kind = self._kind(variant.ranker)
            version = variant.ranker_version
            if kind.trained and not version:
                version = self._current_version(kind)
            try:
                self.check(variant.ranker, version)
            except RankerRefused as exc:
                raise RankerRefused(f"variant {variant.name}: {exc}") from exc

    def _change(self, experiment_id: str, how: Callable[[Experiment], Experiment]) -> Experiment:
        experiment, revision = self._read(experiment_id)
        changed = how(experiment)
        self._store.save_experiment(changed, revision)
        self.refresh()
        return changed

    def _read(self, experiment_id: str) -> tuple[Experiment, int]:
        found = self._store.experiment(experiment_id)
        if found is None:
            raise UnknownRanker(f"no experiment '{experiment_id}'")
        return found
