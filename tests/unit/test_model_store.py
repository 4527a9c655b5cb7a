"""Model versions: publish, list, roll back, activate, refuse, prune; and the RPCs over them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common.events import Event
from services.gen.recofleet.retrieval.v1 import retrieval_pb2
from services.retrieval.domain import Retriever
from services.retrieval.model_store import LocalModelStore, NoPreviousVersion, UnknownVersion
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore
from services.retrieval.training import train

SETTINGS = RetrievalSettings(factors=4, iterations=2)
START = datetime(2026, 3, 1, tzinfo=UTC)


def publish(models: LocalModelStore, n: int = 1) -> list[str]:
    """`n` versions holding nothing but their meta (the store never reads the files)."""

    def build(folder: Path) -> dict[str, Any]:
        (folder / "weights.bin").write_bytes(b"\0" * 8)
        return {"trained_at": "2026-03-01T10:00:00+00:00", "members": 2, "items": 3}

    return [models.publish(build) for _ in range(n)]


@pytest.fixture
def models(tmp_path: Path) -> LocalModelStore:
    return LocalModelStore(tmp_path / "models", keep=5)


def test_versions_are_listed_oldest_first(models: LocalModelStore) -> None:
    published = publish(models, 3)

    assert models.versions() == published == sorted(published)
    assert len(set(published)) == 3
    assert models.current() == published[-1]
    assert models.meta(published[0])["version"] == published[0]


def test_rollback_goes_to_the_version_before_then_the_one_before_that(
    models: LocalModelStore,
) -> None:
    first, second, third = publish(models, 3)

    assert models.previous(third) == second
    assert models.rollback() == second
    assert models.current() == second
    assert models.rollback() == first
    with pytest.raises(NoPreviousVersion, match="nothing to roll back to"):
        models.rollback()
    assert models.current() == first
    # Nothing was deleted: the version rolled back from can be activated again.
    assert models.versions() == [first, second, third]


def test_rollback_with_nothing_published_is_refused(models: LocalModelStore) -> None:
    with pytest.raises(NoPreviousVersion, match="no model version is current"):
        models.rollback()
    publish(models)
    with pytest.raises(NoPreviousVersion):
        models.rollback()


def test_activate_makes_a_kept_version_current(models: LocalModelStore) -> None:
    first, _, third = publish(models, 3)
    models.rollback()

    models.activate(third)
    assert models.current() == third
    models.activate(first)
    assert models.current() == first
    for unknown in ("20200101T000000000000Z", "../CURRENT", ""):
        with pytest.raises(UnknownVersion):
            models.activate(unknown)
    assert models.current() == first


def test_pruning_keeps_the_newest_and_never_the_current_or_previous(tmp_path: Path) -> None:
    models = LocalModelStore(tmp_path / "models", keep=1)
    published = publish(models, 4)

    # keep=1, yet the version before the current stays: a rollback must have somewhere to go.
    assert models.versions() == published[-2:]
    assert models.rollback() == published[-2]


def test_pruning_keeps_the_version_a_rollback_would_go_to_past_refused_ones(
    tmp_path: Path,
) -> None:
    models = LocalModelStore(tmp_path / "models", keep=2)
    first, second = publish(models, 2)
    models.refuse(second, "could not be loaded: truncated")

    third = publish(models)[0]

    assert models.previous(third) == first
    assert models.versions() == [first, second, third]
    fourth = publish(models)[0]
    # `second` was refused and is past keep: pruned, its refusal with it.
    assert models.versions() == [third, fourth]
    assert models.refused() == {}


def test_a_refusal_is_recorded_kept_on_disk_and_skipped_by_rollback(
    models: LocalModelStore, tmp_path: Path
) -> None:
    first, second, third = publish(models, 3)

    models.refuse(second, "could not be loaded: FileNotFoundError")

    again = LocalModelStore(tmp_path / "models")
    assert again.refused() == {second: "could not be loaded: FileNotFoundError"}
    assert json.loads((tmp_path / "models" / "refused.json").read_text()) == again.refused()
    assert again.previous(third) == first
    assert again.rollback() == first
    # Activating it on purpose asks servers to try it again.
    again.activate(second)
    assert again.refused() == {}


def test_current_is_none_when_current_names_a_missing_folder(
    models: LocalModelStore, tmp_path: Path
) -> None:
    publish(models)
    (tmp_path / "models" / "CURRENT").write_text("20200101T000000000000Z")

    assert models.current() is None
    with pytest.raises(NoPreviousVersion):
        models.rollback()


def test_a_half_built_version_is_not_listed(models: LocalModelStore, tmp_path: Path) -> None:
    published = publish(models)
    (tmp_path / "models" / "versions" / ".build-x").mkdir()
    (tmp_path / "models" / "versions" / "20990101T000000000000Z").mkdir()  # no meta.json

    assert models.versions() == published


def test_versions_keep_increasing_when_the_clock_steps_back(
    models: LocalModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = publish(models)[0]

    class Past(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime(2020, 1, 1, tzinfo=UTC)

    monkeypatch.setattr("services.retrieval.model_store.datetime", Past)
    second = publish(models)[0]

    assert second > first
    assert models.versions() == [first, second]


# --- servers follow CURRENT, and the RPCs ----------------------------------------------------


def shop_events() -> list[Event]:
    return [
        Event.model_validate(
            {
                "event_id": f"e-{member}-{item}",
                "type": "view",
                "member_id": f"m-{member}",
                "item_id": f"sku-{(member + item) % 12}",
                "timestamp": START + timedelta(minutes=member * 10 + item),
            }
        )
        for member in range(12)
        for item in range(4)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlInteractionStore]:
    store = SqlInteractionStore.from_url(f"sqlite:///{tmp_path / 'r.db'}", SETTINGS.event_weights)
    store.apply_events(shop_events())
    yield store
    store.close()


def trained(store: SqlInteractionStore, models: LocalModelStore, n: int) -> list[str]:
    return [train(store, models, SETTINGS, force=True).version for _ in range(n)]


def test_servers_follow_current_not_the_newest_version(
    store: SqlInteractionStore, models: LocalModelStore
) -> None:
    _, second, third = trained(store, models, 3)
    serving = Retriever(store, models, SETTINGS)
    assert serving.reload()
    assert serving.model.version == third

    models.rollback()

    assert serving.reload()
    assert serving.model.version == second
    assert not serving.reload()  # the newer third is not picked up again
    starting = Retriever(store, models, SETTINGS)
    assert starting.reload()
    assert starting.model.version == second


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


@pytest.fixture
def served(
    store: SqlInteractionStore, models: LocalModelStore
) -> tuple[RetrievalServicer, Retriever, list[str]]:
    versions = trained(store, models, 3)
    retriever = Retriever(store, models, SETTINGS)
    retriever.reload()
    return RetrievalServicer(retriever, models), retriever, versions


async def test_list_models_marks_the_current_and_refused_versions(
    served, models: LocalModelStore
) -> None:
    servicer, _, (first, second, third) = served
    models.refuse(first, "could not be loaded: truncated")

    reply = await servicer.ListModels(retrieval_pb2.ListModelsRequest(), Context())

    assert [m.version for m in reply.models] == [first, second, third]
    assert [m.current for m in reply.models] == [False, False, True]
    assert reply.served == third
    assert reply.models[0].refused_reason == "could not be loaded: truncated"
    latest = reply.models[2]
    assert (latest.members, latest.items, latest.factors) == (12, 12, 4)
    assert latest.interactions == 48
    assert latest.trained_at == models.meta(third)["trained_at"]


async def test_rollback_model_switches_and_serves_at_once(served, models) -> None:
    servicer, retriever, (_, second, third) = served

    info = await servicer.RollbackModel(retrieval_pb2.RollbackModelRequest(), Context())

    assert info.version == second == models.current() == retriever.model.version
    assert (info.members, info.items) == (12, 12)
    chosen = await servicer.RollbackModel(
        retrieval_pb2.RollbackModelRequest(version=third), Context()
    )
    assert chosen.version == third == retriever.model.version


async def test_rollback_model_without_a_previous_version_fails_its_precondition(
    served, models
) -> None:
    servicer, _, (first, *_) = served
    models.activate(first)

    with pytest.raises(Aborted) as caught:
        await servicer.RollbackModel(retrieval_pb2.RollbackModelRequest(), Context())

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing to roll back to" in caught.value.details


async def test_rollback_model_to_an_unknown_version_is_not_found(served) -> None:
    servicer, _, _ = served

    with pytest.raises(Aborted) as caught:
        await servicer.RollbackModel(
            retrieval_pb2.RollbackModelRequest(version="19990101T000000000000Z"), Context()
        )

    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "19990101T000000000000Z" in caught.value.details


async def test_a_version_that_fails_to_load_is_refused_and_current_stays(
    served, models: LocalModelStore
) -> None:
    servicer, retriever, (_, second, third) = served
    for part in models.path(second).iterdir():
        if part.name != "meta.json":
            part.unlink()  # a version whose files are gone: it cannot load

    with pytest.raises(Aborted) as caught:
        await servicer.RollbackModel(retrieval_pb2.RollbackModelRequest(), Context())

    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{third} stays current" in caught.value.details
    assert f"version {second} could not be loaded" in caught.value.details
    assert models.current() == third == retriever.model.version
    assert second in models.refused()


async def test_model_rpcs_without_a_model_store_are_unimplemented(served) -> None:
    _, retriever, _ = served
    servicer = RetrievalServicer(retriever)

    with pytest.raises(Aborted) as caught:
        await servicer.ListModels(retrieval_pb2.ListModelsRequest(), Context())

    assert caught.value.code == grpc.StatusCode.UNIMPLEMENTED


async def test_a_kept_answer_gives_way_to_the_members_next_event_and_a_new_model(
    served, store: SqlInteractionStore
) -> None:
    servicer, retriever, _ = served
    ask = retrieval_pb2.GetCandidatesRequest(member_id="m-1", limit=5, placement="home")
    first = await servicer.GetCandidates(ask, Context())
    kept = len(retriever.answers)
    assert await servicer.GetCandidates(ask, Context()) == first
    assert retriever.answers.hits == 1 and len(retriever.answers) == kept  # not computed again

    bought = first.candidates[0].item_id
    store.apply_events([Event(event_id="e-new", type="purchase", member_id="m-1", item_id=bought)])
    retriever.members_changed(["m-1"])  # what the consumer says after committing the batch
    after = await servicer.GetCandidates(ask, Context())
    assert retriever.answers.hits == 1  # computed again
    # ALS no longer proposes what the member now owns; buy-again may.
    assert after.candidates[0].item_id != bought or after.candidates[0].source == "buy_again"

    other = await servicer.GetCandidates(
        retrieval_pb2.GetCandidatesRequest(member_id="m-2", limit=5), Context()
    )
    await servicer.RollbackModel(retrieval_pb2.RollbackModelRequest(), Context())
    rolled = await servicer.GetCandidates(
        retrieval_pb2.GetCandidatesRequest(member_id="m-2", limit=5), Context()
    )
    assert rolled.model_version != other.model_version
