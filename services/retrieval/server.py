"""Entry point: `python -m services.retrieval`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import faiss
import grpc
from threadpoolctl import threadpool_limits

from services.common.bus import (
    CATALOG_TOPIC,
    EVENTS_TOPIC,
    MEMBERS_TOPIC,
    EventBus,
    Record,
    open_bus,
)
from services.common.consuming import BusWorker, DeadLetter, decode
from services.common.events import AnyEvent
from services.common.grpc_server import serve
from services.common.members import Erase, Link
from services.common.pii import pii_secret
from services.common.settings import FleetSettings
from services.common.telemetry import configure_telemetry
from services.gen.recofleet.retrieval.v1 import retrieval_pb2_grpc
from services.retrieval.domain import Retriever
from services.retrieval.model_store import ModelStore, ModelStoreUnavailable, open_model_store
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import InteractionStore, SqlInteractionStore

SERVICE_NAME = "recofleet.retrieval.v1.RetrievalService"
log = logging.getLogger(__name__)


def open_store(fleet: FleetSettings, settings: RetrievalSettings) -> SqlInteractionStore:
    url = settings.database_url or fleet.sqlite_url("retrieval")
    return SqlInteractionStore.from_url(
        url, settings.event_weights, pii_secret(fleet), fleet.clock().now
    )


def open_models(fleet: FleetSettings, settings: RetrievalSettings) -> ModelStore:
    return open_model_store(fleet, "retrieval", keep=settings.keep_versions)


def interaction_worker(
    bus: EventBus,
    store: InteractionStore,
    settings: RetrievalSettings,
    retriever: Retriever | None = None,
) -> BusWorker:
    """The consumer that records interactions (training data, member histories) and catalog,
    and follows the members topic: erasures and links apply before the batch's events, so
    an event polled with its member's erasure or its visitor's link is judged by it. Once
    a batch is committed, the `retriever` serving from memory hears what changed."""

    def handle(records: Sequence[Record]) -> list[DeadLetter]:
        decoded = decode(records)
        if decoded.items:
            store.save_catalog(decoded.items)
            if retriever:
                retriever.catalog_changed(decoded.items)
        # In bus order; the links between two erasures in one transaction. Consent is the
        # profiles service's: retrieval keeps none of its own.
        pending: list[Link] = []
        for command in decoded.commands:
            if isinstance(command, Link):
                pending.append(command)
            elif isinstance(command, Erase):
                store.link_visitors(pending)
                pending = []
                store.erase_member(command)
        store.link_visitors(pending)
        if decoded.events:
            store.apply_events(decoded.events)
        if retriever and any(isinstance(c, Erase) for c in decoded.commands):
            # The erased member's visitors' lines went too, and their links are forgotten.
            retriever.activity.clear()
        elif retriever:
            retriever.members_changed(_touched(store, decoded.commands, decoded.events))
        return decoded.dead

    topics = [CATALOG_TOPIC, MEMBERS_TOPIC, EVENTS_TOPIC]
    return BusWorker(bus, settings.consumer_group, topics, handle)


def _touched(
    store: InteractionStore, commands: Sequence[object], events: Sequence[AnyEvent]
) -> set[str]:
    """Whose lines the batch changed: the events' members, the members their visitors are
    linked to, and both sides of every link."""
    touched = {e.member_id for e in events}
    touched |= set(store.linked_members(touched).values()) if touched else set()
    for command in commands:
        if isinstance(command, Link):
            touched |= {command.anonymous_id, command.member_id}
    return touched


async def _watch_models(retriever: Retriever, interval_s: float) -> None:
    while True:
        try:
            await asyncio.to_thread(retriever.reload)
        except ModelStoreUnavailable as exc:  # an outage of the bucket: no stack trace each time
            log.warning("the model store is unavailable (%s); still serving the last model", exc)
        except Exception:
            log.exception("loading the current retrieval model failed; still serving the last one")
        await asyncio.sleep(interval_s)


async def run(fleet: FleetSettings, settings: RetrievalSettings) -> None:
    # One BLAS and one OpenMP (faiss) thread: requests are small solves and searches, and
    # parallel requests use the cores (faiss's two threads made one exact search 14 ms
    # instead of 3 on this machine).
    threadpool_limits(1, "blas")
    faiss.omp_set_num_threads(1)
    bus = open_bus(fleet)
    store = open_store(fleet, settings)
    models = open_models(fleet, settings)
    retriever = Retriever(store, models, settings, fleet.clock().now)
    worker = interaction_worker(bus, store, settings, retriever)
    worker.start()
    watcher = asyncio.create_task(_watch_models(retriever, settings.reload_interval_s))
    servicer = RetrievalServicer(retriever, models)

    def register(server: grpc.aio.Server) -> None:
        retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server)

    async def close() -> None:
        watcher.cancel()
        await asyncio.to_thread(worker.stop)
        store.close()
        bus.close()

    await serve(
        service_name=SERVICE_NAME,
        address=fleet.retrieval_addr,
        metrics_offset=fleet.metrics_port_offset,
        register=register,
        probe=lambda: retriever.ready and worker.alive,
        on_stop=close,
    )


def main() -> None:
    fleet = FleetSettings()
    configure_telemetry("retrieval", fleet)
    asyncio.run(run(fleet, RetrievalSettings()))
