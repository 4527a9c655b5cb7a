"""The fleet at a glance for operators: members, models, consumers and dead letters.

Each figure comes from the service that owns it, all asked at once, each within its own
deadline: profiles counts the members, retrieval and ranking list their models, ingestion
reads the bus (consumer lag, dead letters waiting). A service that fails or overruns leaves
its figures out and is named in `unavailable`; the overview itself never fails for it.
Traffic is not asked of anyone: it is this gateway replica's own count (traffic.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import grpc

from services.gateway.clients import FleetClients
from services.gen.recofleet.ingestion.v1 import ingestion_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2
from services.gen.recofleet.retrieval.v1 import retrieval_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")
Service = Literal["profiles", "retrieval", "ranking", "ingestion"]
# The order `unavailable` names them in, whichever answered first.
SERVICES: tuple[Service, ...] = ("profiles", "retrieval", "ranking", "ingestion")
# Each is a few reads of small files or offsets; a service slower than this is as good as
# down for a page an operator is looking at.
DEADLINE_S = 2.0
BUS_STATUS = ingestion_pb2.GetBusStatusRequest()


@dataclass(frozen=True)
class ModelEntry:
    kind: Literal["retrieval", "ranker"]
    name: str
    version: str | None
    active: bool
    trained_at: str | None = None


@dataclass(frozen=True)
class Consumer:
    group: str
    topic: str
    lag: int


@dataclass
class FleetFigures:
    """What the services said; None (or empty) where one could not say."""

    members: int | None = None
    models: list[ModelEntry] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    consumers_unknown: str | None = None
    dead_letters: int | None = None
    unavailable: list[Service] = field(default_factory=list)


async def gather_figures(clients: FleetClients) -> FleetFigures:
    figures = FleetFigures()
    members, models, rankers, bus = await asyncio.gather(
        _ask(
            figures, "profiles", clients.profiles.CountMembers, profiles_pb2.CountMembersRequest()
        ),
        _ask(figures, "retrieval", clients.retrieval.ListModels, retrieval_pb2.ListModelsRequest()),
        _ask(figures, "ranking", clients.ranking.ListRankers, ranking_pb2.ListRankersRequest()),
        _ask(figures, "ingestion", clients.ingestion.GetBusStatus, BUS_STATUS),
    )
    if members is not None:
        figures.members = members.members
    if models is not None:
        figures.models.extend(retrieval_models(models))
    if rankers is not None:
        figures.models.extend(rankers_of(rankers))
    if bus is not None:
        figures.consumers = [Consumer(c.group, c.topic, c.lag) for c in bus.consumers]
        figures.consumers_unknown = bus.consumers_unknown or None
        figures.dead_letters = bus.dead_letters
    figures.unavailable.sort(key=SERVICES.index)
    return figures


async def _ask(
    figures: FleetFigures, service: Service, method: Callable[..., Awaitable[T]], request: Any
) -> T | None:
    try:
        return await method(request, timeout=DEADLINE_S)
    except grpc.aio.AioRpcError as exc:
        log.warning("overview without %s: %s %s", service, exc.code().name, exc.details())
        figures.unavailable.append(service)
        return None


def retrieval_models(reply: retrieval_pb2.ListModelsResponse) -> list[ModelEntry]:
    """Every retrieval version kept; the one the store's CURRENT names is the active one."""
    return [
        ModelEntry("retrieval", "retrieval", m.version, m.current, m.trained_at or None)
        for m in reply.models
    ]


def rankers_of(reply: ranking_pb2.ListRankersResponse) -> list[ModelEntry]:
    """Every ranker with the version it serves: the active one's as activated, any other's
    current one (none for a ranker that needs no training)."""
    name, _, active_version = reply.active.partition("@")
    entries = []
    for ranker in reply.rankers:
        current = next((v for v in ranker.versions if v.current), None)
        version = current.version if current else None
        if ranker.name == name and active_version:
            version = active_version
        trained = next((v.trained_at for v in ranker.versions if v.version == version), "")
        entries.append(ModelEntry("ranker", ranker.name, version, ranker.active, trained or None))
    return entries
