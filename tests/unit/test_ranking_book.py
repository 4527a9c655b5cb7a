"""The ranker book: activation with its probe, experiments stored and served, on SQLite and
PostgreSQL (the store's conformance runs on both through the `engine` fixture)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from services.common.candidates import CandidateLike
from services.common.clock import Clock
from services.ranking.domain import RankerBook, UnknownRanker
from services.ranking.experiments import NotAllowed, Status, Variant
from services.ranking.probe import RankerRefused
from services.ranking.rankers import BlendRanker, MemberContext, RankedItem, Ranker
from services.ranking.registry import BUILT_INS, RankerInputs, RankerKind
from services.ranking.settings import RankingSettings
from services.ranking.store import SqlRankingStore

AT = datetime(2026, 12, 1, 12, tzinfo=UTC)


class Scripted(Ranker):
    """A trained ranker whose artifact says how it behaves on the probe."""

    name = "scripted"

    def __init__(self, behaviour: str) -> None:
        self._behaviour = behaviour

    def rank(
        self, member: MemberContext, candidates: Sequence[CandidateLike], placement: str, limit: int
    ) -> list[RankedItem]:
        ordered = [RankedItem(c.item_id, float(i), ["scripted"]) for i, c in enumerate(candidates)]
        if self._behaviour == "nan":
            ordered[0] = RankedItem(ordered[0].item_id, math.nan, [])
        if self._behaviour == "duplicates":
            ordered[1] = ordered[0]
        if self._behaviour == "short":
            return ordered[: max(limit - 1, 0)]
        if self._behaviour == "slow":
            time.sleep(0.03)
        return ordered[:limit]


def _scripted(inputs: RankerInputs) -> Ranker:
    assert inputs.artifact is not None
    behaviour = (inputs.artifact / "behaviour.txt").read_text()
    if behaviour == "corrupt":
        raise ValueError("model.txt: truncated")
    return Scripted(behaviour)


KINDS = {**BUILT_INS, "scripted": RankerKind("scripted", "tests", _scripted, trained=True)}


def _book(engine: Engine, models: Path) -> RankerBook:
    return RankerBook(KINDS, SqlRankingStore(engine), RankingSettings(), models, Clock.fixed(AT))


def _publish(book: RankerBook, behaviour: str) -> str:
    def build(folder: Path) -> dict[str, object]:
        (folder / "behaviour.txt").write_text(behaviour)
        return {"trained_at": AT.isoformat(), "behaviour": behaviour}

    return book.model_store("scripted").publish(build)


def test_the_default_ranker_answers_before_any_activation(engine: Engine, tmp_path: Path) -> None:
    choice = _book(engine, tmp_path).choose("m-1", "home")

    assert isinstance(choice.ranker, BlendRanker)
    assert (choice.label, choice.variant, choice.experiment_id) == ("blend", "default", "")


def test_an_activation_reaches_another_replica_on_refresh(engine: Engine, tmp_path: Path) -> None:
    one, other = _book(engine, tmp_path), _book(engine, tmp_path)
    version = _publish(one, "ok")

    done = one.activate("scripted")
    assert other.choose("m-1", "home").label == "blend"
    other.refresh()

    assert other.choose("m-1", "home").label == f"scripted@{version}"
    assert done.activation.version == version and done.probe.calls > 0


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("nan", "not a finite number"),
        ("duplicates", "twice"),
        ("short", "items for"),
        ("slow", "too slow"),
        ("corrupt", "failed to load: model.txt: truncated"),
    ],
)
def test_a_broken_version_is_refused_and_the_active_ranker_stays(
    engine: Engine, tmp_path: Path, behaviour: str, reason: str
) -> None:
    book = _book(engine, tmp_path)
    good = _publish(book, "ok")
    book.activate("scripted", good)
    bad = _publish(book, behaviour)

    with pytest.raises(RankerRefused, match=reason):
        book.activate("scripted", bad)

    assert book.choose("m-1", "home").label == f"scripted@{good}"
    book.refresh()
    assert book.choose("m-1", "home").label == f"scripted@{good}"
    assert reason.split(":")[0] in book.model_store("scripted").refused()[bad]


def test_the_previous_version_can_be_activated_again(engine: Engine, tmp_path: Path) -> None:
    book = _book(engine, tmp_path)
    first = _publish(book, "ok")
    second = _publish(book, "ok")
    book.activate("scripted", second)

    book.activate("scripted", first)

    assert book.choose("m-1", "home").label == f"scripted@{first}"
    assert [a.version for a in book._store.activations()] == [first, second]


def test_unknown_rankers_and_versions_are_not_found(engine: Engine, tmp_path: Path) -> None:
    book = _book(engine, tmp_path)

    with pytest.raises(UnknownRanker, match=r"unknown ranker 'xgboost'.*blend"):
        book.activate("xgboost")
    with pytest.raises(RankerRefused, match="no trained version yet"):
        book.activate("scripted")
    _publish(book, "ok")
    with pytest.raises(UnknownRanker, match="no version '20200101"):
        book.activate("scripted", "20200101T000000000000Z")


def test_an_unknown_default_ranker_fails_at_start(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown default ranker 'xgboost'.*blend"):
        RankerBook(
            KINDS,
            SqlRankingStore(engine),
            RankingSettings(default_ranker="xgboost"),
            tmp_path,
            Clock.fixed(AT),
        )


def _running(book: RankerBook, placement: str = "home") -> str:
    experiment = book.create(
        name="scripted vs blend",
        placement=placement,
        variants=[Variant("control", "blend", 0.5), Variant("treatment", "scripted", 0.5)],
    )
    book.change(experiment.experiment_id, "start")
    return experiment.experiment_id


def test_a_running_experiment_serves_each_member_their_variant_after_a_restart(
    engine: Engine, tmp_path: Path
) -> None:
    book = _book(engine, tmp_path)
    version = _publish(book, "ok")
    experiment_id = _running(book)
    members = [f"m-{i}" for i in range(400)]
    before = {m: book.choose(m, "home") for m in members}

    restarted = _book(engine, tmp_path)
    after = {m: restarted.choose(m, "home") for m in members}

    assert {c.variant for c in before.values()} == {"control", "treatment"}
    assert all(c.experiment_id == experiment_id for c in after.values())
    assert {m: c.variant for m, c in after.items()} == {m: c.variant for m, c in before.items()}
    labels = {c.variant: c.label for c in after.values()}
    assert labels == {"control": "blend", "treatment": f"scripted@{version}"}
    # Other placements are outside the experiment.
    assert restarted.choose("m-1", "cart").variant == "default"


def test_one_experiment_runs_per_placement(engine: Engine, tmp_path: Path) -> None:
    book = _book(engine, tmp_path)
    _publish(book, "ok")
    first = _running(book)

    with pytest.raises(NotAllowed, match=f"{first} is already running on placement 'home'"):
        _running(book)
    _running(book, placement="cart")


def test_an_experiment_whose_variant_fails_the_probe_does_not_start(
    engine: Engine, tmp_path: Path
) -> None:
    book = _book(engine, tmp_path)
    _publish(book, "nan")
    experiment = book.create(
        name="x",
        placement="home",
        variants=[Variant("control", "blend", 0.5), Variant("treatment", "scripted", 0.5)],
    )

    with pytest.raises(RankerRefused, match=r"variant treatment: .*not a finite number"):
        book.change(experiment.experiment_id, "start")
    assert book.experiment(experiment.experiment_id).status is Status.DRAFT
    assert book.choose("m-1", "home").variant == "default"


def test_stopping_with_a_winner_activates_its_ranker(engine: Engine, tmp_path: Path) -> None:
    book = _book(engine, tmp_path)
    version = _publish(book, "ok")
    experiment_id = _running(book)

    stopped = book.change(experiment_id, "stop", winner="treatment")

    assert stopped.status is Status.STOPPED
    choice = book.choose("m-1", "home")
    assert (choice.label, choice.variant) == (f"scripted@{version}", "default")
    assert book._store.active() is not None
    assert "winner treatment" in book._store.active().reason  # type: ignore[union-attr]


def test_shares_ramp_in_the_store(engine: Engine, tmp_path: Path) -> None:
    book = _book(engine, tmp_path)
    experiment = book.create(
        name="pilot",
        placement="home",
        variants=[Variant("control", "blend", 0.05), Variant("treatment", "blend", 0.05)],
    )
    book.change(experiment.experiment_id, "start")

    ramped = book.set_shares(experiment.experiment_id, {"control": 0.5, "treatment": 0.5})

    assert book.experiment(experiment.experiment_id).coverage == pytest.approx(1.0)
    assert json.dumps([v.share for v in ramped.variants]) == "[0.5, 0.5]"
