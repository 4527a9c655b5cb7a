"""The overview: the fleet at a glance for an operator's console (admin).

The services' figures come from their owners (services/gateway/overview.py); traffic is
this gateway replica's own count (services/gateway/traffic.py).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from services.gateway.auth import require
from services.gateway.deps import ClientsDep, TrafficDep
from services.gateway.overview import FleetFigures, Service, gather_figures
from services.gateway.routing import AllowingRoute
from services.gateway.traffic import TrafficWindow

router = APIRouter(prefix="/v1", tags=["overview"], route_class=AllowingRoute)

# [minute, count]: the minute's start (UTC) and what was counted in it.
Point = tuple[datetime, int]


class OverviewModelOut(BaseModel):
    kind: Literal["retrieval", "ranker"]
    name: str = Field(description="`retrieval`, or the ranker's name.")
    version: str | None = Field(description="null: a ranker that needs no training.")
    active: bool = Field(
        description="retrieval: the version every server loads; ranker: the one answers use "
        "outside experiments."
    )
    trained_at: datetime | None = None


class ConsumerOut(BaseModel):
    group: str = Field(description="The consumer group (a service's, e.g. `profiles`).")
    topic: str
    lag: int = Field(description="Records on the topic the group has not committed yet.")


class SeriesOut(BaseModel):
    """Per minute over the last hour, the oldest first; the last minute is under way."""

    events: list[Point] = Field(description="Events ingestion accepted through this replica.")
    recommendations: list[Point] = Field(
        description="Recommendation and similar-item answers this replica served."
    )
    degraded: list[Point] = Field(description="Of them, the degraded answers.")


class OverviewOut(BaseModel):
    as_of: datetime = Field(description="The fleet clock's instant the traffic was read at.")
    members: int | None = Field(
        description="Members the profiles store holds; null when profiles did not answer."
    )
    events_per_second: float = Field(description="Over the last 60 s, on this gateway replica.")
    recommendations_per_second: float = Field(
        description="Over the last 60 s, on this gateway replica."
    )
    degraded_last_hour: int = Field(description="Degraded answers of this replica, last hour.")
    models: list[OverviewModelOut] = Field(
        description="Every retrieval version kept, then every ranker."
    )
    consumers: list[ConsumerOut] = Field(
        description="Every consumer group's lag per topic, read from the bus."
    )
    consumers_unknown: str | None = Field(
        default=None,
        description="Why the bus could not list its consumer groups (a Kafka cluster without "
        "ListGroups); null when it could.",
    )
    dead_letters: int | None = Field(
        description="Dead letters not replayed yet (`recofleet dead-letters`); null when "
        "ingestion did not answer."
    )
    series: SeriesOut
    gateway_replica: str = Field(
        description="The gateway replica (host:pid) whose traffic the rates and series count: "
        "each replica counts what it handled, so behind a load balancer each shows its share."
    )
    unavailable: list[Service] = Field(
        description="Services that did not answer in time: their figures are null or empty."
    )

    @classmethod
    def of(cls, figures: FleetFigures, traffic: TrafficWindow) -> OverviewOut:
        minutes = traffic.minutes
        return cls(
            as_of=traffic.as_of,
            members=figures.members,
            events_per_second=round(traffic.events_per_second, 3),
            recommendations_per_second=round(traffic.recommendations_per_second, 3),
            degraded_last_hour=traffic.degraded,
            models=[OverviewModelOut(**vars(model)) for model in figures.models],
            consumers=[ConsumerOut(**vars(consumer)) for consumer in figures.consumers],
            consumers_unknown=figures.consumers_unknown,
            dead_letters=figures.dead_letters,
            series=SeriesOut(
                events=[(m.starts_at, m.events) for m in minutes],
                recommendations=[(m.starts_at, m.recommendations) for m in minutes],
                degraded=[(m.starts_at, m.degraded) for m in minutes],
            ),
            gateway_replica=REPLICA,
            unavailable=figures.unavailable,
        )


REPLICA = f"{socket.gethostname()}:{os.getpid()}"


@router.get(
    "/overview",
    operation_id="get_overview",
    dependencies=[require("admin")],
    response_model=OverviewOut,
    responses={
        200: {
            "description": "The fleet now: what every service that answered said, and this "
            "replica's traffic; the services that did not answer are in `unavailable`."
        }
    },
)
async def overview(clients: ClientsDep, traffic: TrafficDep) -> OverviewOut:
    """Members, models, consumer lag and dead letters from the services that own them (a
    service down leaves its part out, never fails the page), with the events and
    recommendations this gateway replica handled per second and per minute."""
    figures = await gather_figures(clients)
    return OverviewOut.of(figures, traffic.window())
