"""Experiment definitions and sticky assignment by hash."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import pytest

from services.ranking.experiments import (
    Experiment,
    InvalidExperiment,
    NotAllowed,
    Status,
    Variant,
    bucket,
    new_experiment,
)

AT = datetime(2026, 12, 1, tzinfo=UTC)
MEMBERS = [f"m-{i}" for i in range(20_000)]


def _experiment(control: float = 0.5, treatment: float = 0.5) -> Experiment:
    return new_experiment(
        name="ltr vs blend",
        placement="home",
        variants=[Variant("control", "blend", control), Variant("treatment", "ltr", treatment)],
        known_rankers={"blend", "ltr"},
        created_at=AT,
    )


def _split(experiment: Experiment) -> dict[str, str | None]:
    return {m: (chosen.name if (chosen := experiment.assign(m)) else None) for m in MEMBERS}


def test_shares_are_honoured_and_every_member_gets_one_variant() -> None:
    counts = Counter(_split(_experiment()).values())

    assert set(counts) == {"control", "treatment"}
    assert abs(counts["control"] / len(MEMBERS) - 0.5) < 0.015


def test_assignment_is_the_same_in_another_process() -> None:
    experiment = _experiment()
    here = [bucket(experiment.experiment_id, m) for m in MEMBERS[:50]]
    code = (
        "import sys; from services.ranking.experiments import bucket; "
        f"print([bucket({experiment.experiment_id!r}, f'm-{{i}}') for i in range(50)])"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout

    assert eval(there) == here


def test_experiments_split_members_independently() -> None:
    first, second = _split(_experiment()), _split(_experiment())
    both = Counter((first[m], second[m]) for m in MEMBERS)

    # Independent: each of the four pairs holds about a quarter of the members.
    assert all(abs(n / len(MEMBERS) - 0.25) < 0.015 for n in both.values())


def test_ramping_up_moves_nobody_already_assigned() -> None:
    pilot = _experiment(0.05, 0.05).changed("start", AT)
    before = _split(pilot)
    rollout = pilot.with_shares({"control": 0.5, "treatment": 0.5})
    after = _split(rollout)

    assigned = {m: v for m, v in before.items() if v is not None}
    assert 0.08 < len(assigned) / len(MEMBERS) < 0.12
    assert all(after[m] == v for m, v in assigned.items())
    assert sum(v is None for v in after.values()) == 0


def test_a_new_ratio_between_variants_is_refused_once_it_ran() -> None:
    running = _experiment().changed("start", AT)

    with pytest.raises(NotAllowed, match="only its coverage may change"):
        running.with_shares({"control": 0.2, "treatment": 0.8})
    # Before it ran, any split is fine.
    assert _experiment().with_shares({"control": 0.2, "treatment": 0.8}).coverage == 1.0


@pytest.mark.parametrize(
    ("variants", "field"),
    [
        ([Variant("control", "blend", 0.5)], "variants"),
        ([Variant("a", "blend", 0.5), Variant("a", "blend", 0.5)], "variants"),
        ([Variant("a", "blend", 0.7), Variant("b", "blend", 0.7)], "variants"),
        ([Variant("a", "blend", 0.5), Variant("b", "xgboost", 0.5)], r"variants\[1\].ranker"),
        ([Variant("a", "blend", 0.5), Variant("b", "blend", 0.0)], r"variants\[1\].share"),
        ([Variant("a", "blend", 0.5), Variant("", "blend", 0.5)], r"variants\[1\].name"),
        ([Variant("default", "blend", 0.5), Variant("b", "blend", 0.5)], "variants"),
    ],
)
def test_a_bad_definition_names_the_field(variants: list[Variant], field: str) -> None:
    with pytest.raises(InvalidExperiment, match=rf"^{field}"):
        new_experiment(
            name="x", placement="home", variants=variants, known_rankers={"blend"}, created_at=AT
        )


def test_unknown_metric_and_missing_placement_are_named() -> None:
    variants = [Variant("a", "blend", 0.5), Variant("b", "blend", 0.5)]
    with pytest.raises(InvalidExperiment, match=r"^primary_metric"):
        new_experiment(
            name="x",
            placement="home",
            variants=variants,
            known_rankers={"blend"},
            primary_metric="clicks",
            created_at=AT,
        )
    with pytest.raises(InvalidExperiment, match=r"^placement"):
        new_experiment(
            name="x", placement=" ", variants=variants, known_rankers={"blend"}, created_at=AT
        )


def test_transitions() -> None:
    draft = _experiment()
    running = draft.changed("start", AT)
    paused = running.changed("pause", AT)
    stopped = paused.changed("start", AT).changed("stop", AT, winner="treatment")

    assert (running.status, paused.status, stopped.status) == (
        Status.RUNNING,
        Status.PAUSED,
        Status.STOPPED,
    )
    assert stopped.winner == "treatment" and stopped.started_at == AT
    with pytest.raises(NotAllowed, match="cannot start an experiment that is stopped"):
        stopped.changed("start", AT)
    with pytest.raises(NotAllowed, match="cannot pause an experiment that is draft"):
        draft.changed("pause", AT)
    with pytest.raises(InvalidExperiment, match=r"^winner"):
        running.changed("stop", AT, winner="nobody")
