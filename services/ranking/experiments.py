"""Experiments: variants of a placement's ranking, shown to shares of its members.

Assignment is a pure function of the member id and the experiment id (a hash), so every
replica of ranking, before and after a restart, puts a member in the same variant without
storing anything per member.

Each variant owns a fixed slot of the unit interval, proportional to its share of the
experiment (its weight); a member whose hash falls in a slot is in that variant when the
hash is within the first `coverage` part of the slot, where coverage is the sum of the
shares. Ramping (a pilot at 5% + 5%, then 50% + 50%) raises coverage with the weights kept:
slots only grow, so nobody already in a variant moves to another. Changing the weights
would move members, so it is refused once the experiment has run (stop it and start a new
one).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

METRICS = ("ctr", "add_to_cart_rate", "conversion_rate", "revenue_per_member")
GUARDRAILS = ("latency_p99_ms", "refund_rate", "ctr", "add_to_cart_rate", "conversion_rate")
DEFAULT_VARIANT = "default"
NAME_LIMIT = 64
# Shares are compared with this slack: 0.1 + 0.2 must be allowed to sum to 0.3.
EPSILON = 1e-9
# Weights are compared after rounding: a JSON share of 0.333333 must not count as a change.
WEIGHT_DIGITS = 6


class Status(StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


# action -> the statuses it is allowed from, and the status it leads to.
TRANSITIONS: dict[str, tuple[frozenset[Status], Status]] = {
    "start": (frozenset({Status.DRAFT, Status.PAUSED}), Status.RUNNING),
    "pause": (frozenset({Status.RUNNING}), Status.PAUSED),
    "stop": (frozenset({Status.DRAFT, Status.RUNNING, Status.PAUSED}), Status.STOPPED),
}


class InvalidExperiment(ValueError):
    """A definition that cannot run; the message names the field."""


class NotAllowed(RuntimeError):
    """A change the experiment's status does not allow."""


@dataclass(frozen=True)
class Variant:
    name: str
    ranker: str
    share: float
    ranker_version: str = ""


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str
    placement: str
    variants: tuple[Variant, ...]
    primary_metric: str = "ctr"
    guardrails: tuple[str, ...] = ()
    status: Status = Status.DRAFT
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    winner: str = ""
    control: str = ""
    # Set once it first started: from then on only its coverage may change.
    has_run: bool = field(default=False)

    @property
    def coverage(self) -> float:
        """The share of the placement's traffic in the experiment."""
        return sum(v.share for v in self.variants)

    @property
    def control_variant(self) -> str:
        return self.control or self.variants[0].name

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    def assign(self, member_id: str) -> Variant | None:
        """The member's variant, or None when they fall outside the experiment's coverage."""
        return assign(self.experiment_id, self.variants, member_id)

    def changed(self, action: str, at: datetime, winner: str = "") -> Experiment:
        """The experiment after `action` (start, pause, stop) at `at`."""
        if action not in TRANSITIONS:
            raise InvalidExperiment(f"action: unknown '{action}'; known: {sorted(TRANSITIONS)}")
        allowed, status = TRANSITIONS[action]
        if self.status not in allowed:
            raise NotAllowed(f"cannot {action} an experiment that is {self.status.value}")
        if winner and self.variant(winner) is None:
            raise InvalidExperiment(
                f"winner: no variant '{winner}'; variants: {[v.name for v in self.variants]}"
            )
        if winner and action != "stop":
            raise InvalidExperiment("winner: only stop takes a winner")
        started = self.started_at or (at if status is Status.RUNNING else None)
        return replace(
            self,
            status=status,
            started_at=started,
            stopped_at=at if status is Status.STOPPED else None,
            winner=winner,
            has_run=self.has_run or status is Status.RUNNING,
        )

    def with_shares(self, shares: Mapping[str, float]) -> Experiment:
        """The experiment with new traffic shares (every variant named, none unknown)."""
        known = {v.name for v in self.variants}
        unknown = sorted(set(shares) - known)
        if unknown:
            raise InvalidExperiment(f"shares: no variant {unknown}; variants: {sorted(known)}")
        missing = sorted(known - set(shares))
        if missing:
            raise InvalidExperiment(f"shares: give every variant's share; missing {missing}")
        if self.status is Status.STOPPED:
            raise NotAllowed("cannot change the shares of a stopped experiment")
        variants = tuple(replace(v, share=float(shares[v.name])) for v in self.variants)
        ramped = replace(self, variants=variants)
        _check_shares(variants)
        if self.has_run and _weights(variants) != _weights(self.variants):
            raise NotAllowed(
                "shares: once an experiment has run, only its coverage may change (every "
                "share scaled by the same factor): a new ratio between variants would move "
                "members already assigned to another variant; stop it and create a new one"
            )
        return ramped


def assign(experiment_id: str, variants: Sequence[Variant], member_id: str) -> Variant | None:
    total = sum(v.share for v in variants)
    if total <= 0:
        return None
    point = bucket(experiment_id, member_id)
    start = 0.0
    for variant in variants:
        width = variant.share / total
        if point < start + width:
            return variant if point - start < width * total else None
        start += width
    return None


def bucket(experiment_id: str, member_id: str) -> float:
    """Where the member falls in [0, 1) for this experiment: the same on every process and
    platform (a cryptographic hash, not Python's salted `hash`), and independent between
    experiments, so one experiment's split does not decide another's."""
    digest = hashlib.blake2b(f"{experiment_id}\x1f{member_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def new_experiment(
    *,
    name: str,
    placement: str,
    variants: Iterable[Variant],
    known_rankers: Iterable[str],
    primary_metric: str = "",
    guardrails: Iterable[str] = (),
    control: str = "",
    created_at: datetime,
) -> Experiment:
    """A draft experiment, checked: a clear `InvalidExperiment` naming the field otherwise."""
    experiment = Experiment(
        experiment_id=f"exp-{uuid.uuid4().hex[:12]}",
        name=name.strip(),
        placement=placement.strip(),
        variants=tuple(variants),
        primary_metric=primary_metric or "ctr",
        guardrails=tuple(guardrails),
        control=control,
        created_at=created_at,
    )
    check(experiment, set(known_rankers))
    return experiment


def check(experiment: Experiment, known_rankers: set[str]) -> None:
    _check_name(experiment.name, "name")
    _check_name(experiment.placement, "placement")
    if len(experiment.variants) < 2:
        raise InvalidExperiment("variants: an experiment needs at least two variants")
    names = [v.name for v in experiment.variants]
    for index, variant in enumerate(experiment.variants):
        _check_name(variant.name, f"variants[{index}].name")
        if variant.ranker not in known_rankers:
            raise InvalidExperiment(
                f"variants[{index}].ranker: unknown ranker '{variant.ranker}'; "
                f"known: {sorted(known_rankers)}"
            )
    if len(set(names)) != len(names):
        raise InvalidExperiment(f"variants: names must differ; got {names}")
    if DEFAULT_VARIANT in names:
        raise InvalidExperiment(
            f"variants: '{DEFAULT_VARIANT}' is what members outside every experiment get"
        )
    _check_shares(experiment.variants)
    if experiment.primary_metric not in METRICS:
        raise InvalidExperiment(
            f"primary_metric: unknown '{experiment.primary_metric}'; known: {list(METRICS)}"
        )
    for index, guardrail in enumerate(experiment.guardrails):
        if guardrail not in GUARDRAILS:
            raise InvalidExperiment(
                f"guardrails[{index}]: unknown '{guardrail}'; known: {list(GUARDRAILS)}"
            )
    if experiment.control and experiment.control not in names:
        raise InvalidExperiment(f"control: no variant '{experiment.control}'; variants: {names}")


def _check_name(value: str, where: str) -> None:
    if not value:
        raise InvalidExperiment(f"{where}: required")
    if len(value) > NAME_LIMIT or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidExperiment(f"{where}: at most {NAME_LIMIT} characters, no control characters")


def _check_shares(variants: Sequence[Variant]) -> None:
    for index, variant in enumerate(variants):
        if not 0 < variant.share <= 1:
            raise InvalidExperiment(
                f"variants[{index}].share: must be above 0 and at most 1; got {variant.share}"
            )
    total = sum(v.share for v in variants)
    if total > 1 + EPSILON:
        raise InvalidExperiment(f"variants: the shares sum to {total:g}, more than 1")


def _weights(variants: Sequence[Variant]) -> tuple[float, ...]:
    total = sum(v.share for v in variants)
    return tuple(round(v.share / total, WEIGHT_DIGITS) for v in variants)


def running_for(experiments: Iterable[Experiment], placement: str) -> Experiment | None:
    """The experiment running on the placement: at most one runs per placement, so that a
    member sees one variant there."""
    return next(
        (e for e in experiments if e.placement == placement and e.status is Status.RUNNING),
        None,
    )
