"""Model versions in local folders, the fleet's choice of model store; servers following
CURRENT, and the RPCs over the versions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from services.common.events import Event
from services.common.settings import FleetSettings
from services.gen.recofleet.retrieval.v1 import retrieval_pb2
from services.ranking.domain import ranker_store, rankers_dir
from services.ranking.settings import RankingSettings
from services.retrieval.domain import Retriever
from services.retrieval.model_store import LocalModelStore, ModelStore, open_model_store
from services.retrieval.s3_model_store import S3ModelStore, s3_client
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore
from services.retrieval.training import train

SETTINGS = RetrievalSettings(factors=4, iterations=2)
START = datetime(2026, 3, 1, tzinfo=UTC)


def publish(models: ModelStore, n: int = 1) -> list[str]:
    """`n` versions holding nothing but their meta (the store never reads the files)."""

    def build(folder: Path) -> dict[str, Any]:
        (folder / "weights.bin").write_bytes(b"\0" * 8)
        return {"trained_at": "2026-03-01T10:00:00+00:00", "members": 2, "items": 3}

    return [models.publish(build) for _ in range(n)]


@pytest.fixture
def models(tmp_path: Path) -> LocalModelStore:
    return LocalModelStore(tmp_path / "models", keep=5)


# What any store does is in tests/conformance/test_model_store.py (local and S3); here is
# what only the local folders do, and how the fleet's settings pick a store.


def test_a_refusal_is_written_whole_to_refused_json(
    models: LocalModelStore, tmp_path: Path
) -> None:
    _, second = publish(models, 2)

    models.refuse(second, "could not be loaded: FileNotFoundError")

    root = tmp_path / "models"
    assert json.loads((root / "refused.json").read_text()) == models.refused()
    assert not list(root.glob(".tmp-*"))  # written aside, then renamed over


def test_a_half_built_version_is_not_listed(models: LocalModelStore, tmp_path: Path) -> None:
    published = publish(models)
    # A build writes its meta.json before its folder is renamed into place.
    staging = tmp_path / "models" / "versions" / ".build-x"
    staging.mkdir()
    (staging / "meta.json").write_text("{}")

    assert models.versions() == published
    assert models.current() == published[0]


def test_the_fleets_models_are_folders_in_the_data_dir_by_default(tmp_path: Path) -> None:
    fleet = FleetSettings(data_dir=tmp_path)

    models = open_model_store(fleet, "rankers/ltr", keep=2)
    (version,) = publish(models)

    assert isinstance(models, LocalModelStore)
    assert (tmp_path / "models" / "rankers" / "ltr" / "versions" / version / "meta.json").is_file()
    # The ranking server names its rankers by their folder, train-ranker by the fleet: one store.
    by_folder = ranker_store(rankers_dir(fleet), "ltr", RankingSettings())
    assert by_folder.current() == ranker_store(fleet, "ltr", RankingSettings()).current() == version


def test_an_s3_store_without_a_bucket_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOFLEET_MODEL_STORE_KIND", "s3")

    with pytest.raises(ValidationError, match="needs RECOFLEET_MODEL_STORE_S3_BUCKET"):
        FleetSettings()


def test_the_s3_store_is_configured_by_recofleet_model_store_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in {
        "RECOFLEET_DATA_DIR": str(tmp_path),
        "RECOFLEET_MODEL_STORE_KIND": "s3",
        "RECOFLEET_MODEL_STORE_S3_BUCKET": "shop-models",
        "RECOFLEET_MODEL_STORE_S3_ENDPOINT": "http://minio.storage:9000",
        "RECOFLEET_MODEL_STORE_S3_REGION": "eu-west-3",
        "RECOFLEET_MODEL_STORE_S3_PREFIX": "/prod/",
        # Credentials are boto3's own variables (a Secret in the chart); none is looked up
        # from an instance's metadata here.
        "AWS_ACCESS_KEY_ID": "minio-user",
        "AWS_SECRET_ACCESS_KEY": "minio-password",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    fleet = FleetSettings()

    models = open_model_store(fleet, "retrieval", keep=3)

    assert isinstance(models, S3ModelStore)
    assert repr(models) == "S3ModelStore(s3://shop-models/prod/retrieval)"
    client = s3_client("http://minio.storage:9000", "eu-west-3")
    assert client.meta.endpoint_url == "http://minio.storage:9000"
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.config.s3["addressing_style"] == "path"  # MinIO has no bucket hosts
    assert fleet.model_cache_dir == tmp_path / "model-cache"


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
