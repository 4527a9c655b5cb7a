"""What any ModelStore must do, as the trainer and the servers using it would notice; run
against the local folders and against an S3 bucket (moto's S3 server, over HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import EndpointConnectionError

from services.retrieval import server
from services.retrieval.domain import Retriever
from services.retrieval.model_store import (
    META,
    ModelStore,
    ModelStoreUnavailable,
    NoPreviousVersion,
    UnknownVersion,
)
from services.retrieval.server import open_models
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore
from services.retrieval.training import train
from tests.tcp_proxy import TcpProxy
from tests.unit.test_model_store import shop_events

from .conftest import S3_BUCKET, ModelStorage

pytestmark = pytest.mark.timeout(60)

FILES = {"weights.bin": b"\0" * 8, "parts/ids.json": b'["sku-1", "sku-2"]'}
NOT_KEPT = "20200101T000000000000Z"
LATER = "20990101T000000000000Z"


def build(folder: Path) -> dict[str, Any]:
    """A version's files (one in a subfolder) and its meta; the store never reads the files."""
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return {"trained_at": "2026-03-01T10:00:00+00:00", "members": 2, "items": 3}


def publish(models: ModelStore, n: int = 1) -> list[str]:
    return [models.publish(build) for _ in range(n)]


def files_in(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != META
    }


@pytest.fixture
def models(model_storage: ModelStorage) -> ModelStore:
    return model_storage.open()


# --- publish, list, roll back, activate --------------------------------------------------------


def test_versions_are_listed_oldest_first(models: ModelStore) -> None:
    published = publish(models, 3)

    assert models.versions() == published == sorted(published)
    assert len(set(published)) == 3
    assert models.current() == published[-1]
    assert models.meta(published[0])["version"] == published[0]
    assert models.meta(published[0])["members"] == 2


def test_nothing_is_current_before_the_first_publish(models: ModelStore) -> None:
    assert models.current() is None
    assert models.versions() == []
    assert models.refused() == {}


def test_rollback_goes_to_the_version_before_then_the_one_before_that(
    models: ModelStore,
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


def test_rollback_with_nothing_published_is_refused(models: ModelStore) -> None:
    with pytest.raises(NoPreviousVersion, match="no model version is current"):
        models.rollback()
    publish(models)
    with pytest.raises(NoPreviousVersion):
        models.rollback()


def test_activate_makes_a_kept_version_current(models: ModelStore) -> None:
    first, _, third = publish(models, 3)
    models.rollback()

    models.activate(third)
    assert models.current() == third
    models.activate(first)
    assert models.current() == first
    for unknown in (NOT_KEPT, "../CURRENT", ""):
        with pytest.raises(UnknownVersion):
            models.activate(unknown)
    assert models.current() == first


def test_a_failed_build_publishes_nothing(models: ModelStore) -> None:
    (first,) = publish(models)

    def broken(folder: Path) -> dict[str, Any]:
        build(folder)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        models.publish(broken)

    assert models.versions() == [first]
    assert models.current() == first


def test_versions_keep_increasing_when_the_clock_steps_back(
    models: ModelStore, monkeypatch: pytest.MonkeyPatch
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


# --- pruning ----------------------------------------------------------------------------------


def test_pruning_keeps_the_newest_and_never_the_current_or_previous(
    model_storage: ModelStorage,
) -> None:
    models = model_storage.open(keep=1)
    published = publish(models, 4)

    # keep=1, yet the version before the current stays: a rollback must have somewhere to go.
    assert models.versions() == published[-2:]
    assert models.rollback() == published[-2]
    with pytest.raises(UnknownVersion):
        models.path(published[0])


def test_pruning_keeps_the_version_a_rollback_would_go_to_past_refused_ones(
    model_storage: ModelStorage,
) -> None:
    models = model_storage.open(keep=2)
    first, second = publish(models, 2)
    models.refuse(second, "could not be loaded: truncated")

    third = publish(models)[0]

    assert models.previous(third) == first
    assert models.versions() == [first, second, third]
    fourth = publish(models)[0]
    # `second` was refused and is past keep: pruned, its refusal with it.
    assert models.versions() == [third, fourth]
    assert models.refused() == {}


# --- refusals ---------------------------------------------------------------------------------


def test_a_refusal_is_recorded_seen_by_every_replica_and_skipped_by_rollback(
    model_storage: ModelStorage,
) -> None:
    first, second, third = publish(model_storage.open("a"), 3)

    model_storage.open("a").refuse(second, "could not be loaded: FileNotFoundError")

    other = model_storage.open("b")
    assert other.refused() == {second: "could not be loaded: FileNotFoundError"}
    assert other.previous(third) == first
    assert other.rollback() == first
    # Activating it on purpose asks servers to try it again.
    other.activate(second)
    assert model_storage.open("a").refused() == {}
    assert model_storage.open("a").current() == second


# --- what a reader never sees -----------------------------------------------------------------


def test_a_version_written_without_its_meta_is_not_listed_and_never_current(
    model_storage: ModelStorage,
) -> None:
    models = model_storage.open()
    published = publish(models)
    # What a trainer that stopped uploading before meta.json leaves behind.
    model_storage.put_raw(f"versions/{LATER}/weights.bin", b"\0" * 8)

    assert models.versions() == published
    assert models.current() == published[0]
    with pytest.raises(UnknownVersion):
        models.activate(LATER)
    with pytest.raises(UnknownVersion):
        models.path(LATER)
    assert models.previous(LATER) == published[0]
    # Even a CURRENT naming it (no writer does: CURRENT comes after meta.json) is not obeyed.
    model_storage.put_raw("CURRENT", LATER.encode())
    assert models.current() is None


def test_current_is_none_when_current_names_a_version_not_kept(
    model_storage: ModelStorage,
) -> None:
    models = model_storage.open()
    publish(models)
    model_storage.put_raw("CURRENT", NOT_KEPT.encode())

    assert models.current() is None
    with pytest.raises(NoPreviousVersion):
        models.rollback()


# --- the files of a version -------------------------------------------------------------------


def test_path_is_a_folder_with_the_versions_files_on_every_replica(
    model_storage: ModelStorage,
) -> None:
    (version,) = publish(model_storage.open("trainer"))

    for replica in ("trainer", "server"):
        folder = model_storage.open(replica).path(version)
        assert files_in(folder) == FILES
        assert (folder / META).is_file()
        assert model_storage.open(replica).meta(version)["version"] == version


def test_path_of_a_version_not_kept_is_unknown(models: ModelStore) -> None:
    publish(models)

    for unknown in (NOT_KEPT, "../CURRENT", "", "versions"):
        with pytest.raises(UnknownVersion):
            models.path(unknown)
    with pytest.raises(FileNotFoundError):
        models.meta(NOT_KEPT)


# --- replicas ---------------------------------------------------------------------------------


def test_replicas_see_each_others_publish_and_activate(model_storage: ModelStorage) -> None:
    trainer, server_a, server_b = (model_storage.open(r) for r in ("trainer", "a", "b"))
    assert server_a.current() is None

    first, second = publish(trainer, 2)

    assert server_a.current() == server_b.current() == second
    assert server_a.versions() == server_b.versions() == [first, second]
    server_a.activate(first)  # an operator's rollback through one replica
    assert server_b.current() == first == trainer.current()
    (third,) = publish(trainer)
    assert server_b.current() == third
    assert files_in(server_b.path(third)) == FILES


def test_a_retrieval_server_serves_what_a_trainer_elsewhere_published(
    model_storage: ModelStorage, tmp_path: Path
) -> None:
    settings = RetrievalSettings(factors=4, iterations=2)
    interactions = SqlInteractionStore.from_url(
        f"sqlite:///{tmp_path / 'retrieval.db'}", settings.event_weights
    )
    try:
        interactions.apply_events(shop_events())
        # As `recofleet train` and the retrieval server open their stores.
        trained = train(
            interactions, open_models(model_storage.fleet("trainer"), settings), settings
        )
        retriever = Retriever(
            interactions, open_models(model_storage.fleet("server"), settings), settings
        )

        assert retriever.reload()

        assert retriever.model.version == trained.version
        answer = retriever.for_member("m-1", 5, [])
        assert answer.model_version == trained.version
        assert len(answer.candidates) == 5
    finally:
        interactions.close()


# --- S3 only: downloads, uploads cut short, conditional writes, the network -------------------


@contextlib.contextmanager
def requests_sent(client: Any) -> Iterator[list[str]]:
    """The S3 operations `client` sends meanwhile (the stores of every replica share it)."""
    sent: list[str] = []

    def record(event_name: str, **_: Any) -> None:
        sent.append(event_name.rsplit(".", 1)[-1])

    client.meta.events.register("before-send.s3", record, unique_id="requests-sent")
    try:
        yield sent
    finally:
        client.meta.events.unregister("before-send.s3", unique_id="requests-sent")


def test_a_version_is_downloaded_once_per_replica(s3_storage: ModelStorage) -> None:
    (version,) = publish(s3_storage.open("trainer"))

    with requests_sent(s3_storage.client()) as first:
        folder = s3_storage.open("server").path(version)
    with requests_sent(s3_storage.client()) as again:
        assert s3_storage.open("server").path(version) == folder  # a restarted process too
        assert s3_storage.open("server").meta(version)["version"] == version
    with requests_sent(s3_storage.client()) as publisher:
        assert files_in(s3_storage.open("trainer").path(version)) == FILES

    assert first.count("GetObject") == len(FILES) + 1  # and meta.json
    assert files_in(folder) == FILES
    assert again == []
    assert publisher == []  # what it uploaded is its copy


def test_readers_in_one_pod_share_one_download(s3_storage: ModelStorage) -> None:
    (version,) = publish(s3_storage.open("trainer"))
    readers = [s3_storage.open("server") for _ in range(4)]
    folders: list[Path] = []

    with requests_sent(s3_storage.client()) as sent:
        threads = [
            threading.Thread(target=lambda r=r: folders.append(r.path(version))) for r in readers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert len(set(folders)) == 1 and len(folders) == 4
    assert files_in(folders[0]) == FILES
    assert sent.count("GetObject") == len(FILES) + 1
    assert [p.name for p in folders[0].parent.iterdir()] == [version]  # no temporary folder left


@contextlib.contextmanager
def network_drops(client: Any, operation: str, key_suffix: str) -> Iterator[None]:
    """The network drops whenever `client` sends `operation` on a key ending so."""

    def drop(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].endswith(key_suffix):
            raise EndpointConnectionError(endpoint_url="http://s3.example")

    event = f"provide-client-params.s3.{operation}"
    client.meta.events.register(event, drop, unique_id="network-drops")
    try:
        yield
    finally:
        client.meta.events.unregister(event, unique_id="network-drops")


def test_meta_json_is_the_last_object_of_a_version_and_current_comes_after(
    s3_storage: ModelStorage,
) -> None:
    models = s3_storage.open("trainer")
    keys: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        keys.append(params["Key"].split("/retrieval/", 1)[1])

    s3_storage.client().meta.events.register(
        "provide-client-params.s3.PutObject", record, unique_id="record-puts"
    )
    try:
        version = models.publish(build)
    finally:
        s3_storage.client().meta.events.unregister(
            "provide-client-params.s3.PutObject", unique_id="record-puts"
        )

    uploaded = [f"versions/{version}/{name}" for name in sorted(FILES)]
    assert keys[: len(FILES) + 2] == [*uploaded, f"versions/{version}/{META}", "CURRENT"]


@pytest.mark.parametrize("cut_at", ["weights.bin", META])
def test_an_upload_cut_short_leaves_no_version_behind(
    s3_storage: ModelStorage, cut_at: str
) -> None:
    models = s3_storage.open("trainer")
    (first,) = publish(models)
    client = s3_storage.client()

    with (
        network_drops(client, "PutObject", f"/{cut_at}"),
        pytest.raises(ModelStoreUnavailable, match=f"put .*/{re.escape(cut_at)} failed"),
    ):
        models.publish(build)

    reader = s3_storage.open("server")
    assert reader.versions() == [first]
    assert reader.current() == first
    prefix = f"{s3_storage.s3['model_store_s3_prefix']}/retrieval/versions/"
    listed = client.list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix)["Contents"]
    assert {o["Key"].split("/")[3] for o in listed} == {first}  # what it uploaded was removed
    assert [p.name for p in (s3_storage.root / "trainer/model-cache/retrieval").iterdir()] == [
        first
    ]


def test_a_meta_json_whose_answer_was_lost_does_not_leave_a_version_listed(
    s3_storage: ModelStorage,
) -> None:
    models = s3_storage.open("trainer")
    (first,) = publish(models)
    client = s3_storage.client()
    landed: list[str] = []

    def land_then_drop(params: dict[str, Any], **_: Any) -> None:
        if params["Key"].endswith(f"/{META}") and not landed:
            landed.append(params["Key"])
            client.put_object(**params)  # it reached the bucket; the answer did not come back
            raise EndpointConnectionError(endpoint_url="http://s3.example")

    event = "provide-client-params.s3.PutObject"
    client.meta.events.register(event, land_then_drop, unique_id="land-then-drop")
    try:
        with pytest.raises(ModelStoreUnavailable):
            models.publish(build)
    finally:
        client.meta.events.unregister(event, unique_id="land-then-drop")

    assert landed
    assert s3_storage.open("server").versions() == [first]
    assert s3_storage.open("server").current() == first


def test_a_download_cut_short_leaves_no_copy_and_the_next_is_whole(
    s3_storage: ModelStorage,
) -> None:
    (version,) = publish(s3_storage.open("trainer"))
    reader = s3_storage.open("server")
    cache = s3_storage.root / "server/model-cache/retrieval"

    with network_drops(s3_storage.client(), "GetObject", "/weights.bin"):
        with pytest.raises(ModelStoreUnavailable, match=r"weights\.bin failed"):
            reader.path(version)
        assert list(cache.iterdir()) == []  # neither half a copy nor its temporary folder

    assert files_in(reader.path(version)) == FILES


def test_a_refusal_written_between_anothers_read_and_write_is_kept(
    s3_storage: ModelStorage,
) -> None:
    first, second, _ = publish(s3_storage.open("trainer"), 3)
    slow, fast = s3_storage.open("a"), s3_storage.open("b")
    client = s3_storage.client()
    interleaved: list[str] = []

    def overtake(params: dict[str, Any], **_: Any) -> None:
        # The slow replica read refused.json and is about to write: the fast one writes first.
        if params["Key"].endswith("refused.json") and not interleaved:
            interleaved.append(params["Key"])
            fast.refuse(first, "fast: truncated")

    client.meta.events.register("provide-client-params.s3.PutObject", overtake, unique_id="o")
    try:
        slow.refuse(second, "slow: bad format")
    finally:
        client.meta.events.unregister("provide-client-params.s3.PutObject", unique_id="o")

    assert interleaved
    assert s3_storage.open("c").refused() == {first: "fast: truncated", second: "slow: bad format"}


def test_an_unreachable_bucket_raises_model_store_unavailable(s3_storage: ModelStorage) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # a port nothing listens on, once closed
        nowhere = f"http://127.0.0.1:{sock.getsockname()[1]}"
    store = open_models(s3_storage.fleet("a", endpoint=nowhere), RetrievalSettings())

    for call in (store.current, store.versions, store.refused, lambda: store.publish(build)):
        with pytest.raises(ModelStoreUnavailable, match=f"s3://{S3_BUCKET}/.*failed") as caught:
            call()
        assert isinstance(caught.value, OSError)  # what a local store's failures are


async def test_a_server_keeps_serving_through_an_outage_and_takes_the_new_version_after(
    s3_storage: ModelStorage, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = RetrievalSettings(factors=4, iterations=2)
    port = urlsplit(s3_storage.s3["model_store_s3_endpoint"]).port
    interactions = SqlInteractionStore.from_url(
        f"sqlite:///{tmp_path / 'retrieval.db'}", settings.event_weights
    )
    interactions.apply_events(shop_events())
    trainer = open_models(s3_storage.fleet("trainer"), settings)
    first = train(interactions, trainer, settings).version
    with TcpProxy("127.0.0.1", port or 80) as proxy:
        seen = s3_storage.fleet("server", endpoint=f"http://127.0.0.1:{proxy.port}")
        retriever = Retriever(interactions, open_models(seen, settings), settings)
        watcher = asyncio.create_task(server._watch_models(retriever, 0.05))
        try:
            await until(lambda: retriever.ready)
            proxy.cut()
            second = train(interactions, trainer, settings, force=True).version
            await until(lambda: "model store is unavailable" in caplog.text)
            assert retriever.model.version == first
            assert retriever.for_member("m-1", 5, []).model_version == first

            proxy.restore()

            await until(lambda: retriever.model.version == second)
        finally:
            watcher.cancel()
            interactions.close()


async def until(condition: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.05)
