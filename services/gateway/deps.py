"""FastAPI dependencies: what routers get from the app's state.

Every one is `async def` though none awaits: FastAPI runs a plain `def` dependency in a
worker thread, and those hops were a sixth of the gateway's CPU per recommendation.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from services.common.events import check_member_id
from services.common.pii import PiiScrubber
from services.gateway.clients import FleetClients
from services.gateway.compose import Composer
from services.gateway.limits import RateLimiter
from services.gateway.settings import GatewaySettings
from services.gateway.traffic import Traffic


async def _composer(request: Request) -> Composer:
    composer: Composer = request.app.state.composer
    return composer


async def _clients(request: Request) -> FleetClients:
    clients: FleetClients = request.app.state.clients
    return clients


async def _limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


async def _settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


async def _traffic(request: Request) -> Traffic:
    traffic: Traffic = request.app.state.traffic
    return traffic


async def _stored_member_id(
    request: Request,
    member_id: Annotated[
        str, Path(min_length=1, max_length=128, description="The shop's member id")
    ],
) -> str:
    # The bounds every store keeps, on every member route alike (a control character got a
    # 422 from consent and erasure, but a 200 from recommendations).
    problem = check_member_id(member_id)
    if problem:
        raise HTTPException(422, problem)
    return stored_member_id(request, member_id)


def stored_member_id(request: Request, member_id: str) -> str:
    """The member id as the stores know it: an email or a phone number becomes the token
    ingestion gave it on the way in; any other id is itself."""
    scrubber: PiiScrubber = request.app.state.member_ids
    return str(scrubber.scrub(member_id, "member_id"))


def checked_limit(limit: int, settings: GatewaySettings) -> int:
    """The `limit` asked for, refused with 422 past the configured maximum."""
    if limit > settings.max_limit:
        raise HTTPException(422, f"limit must be at most {settings.max_limit}")
    return limit


ComposerDep = Annotated[Composer, Depends(_composer)]
ClientsDep = Annotated[FleetClients, Depends(_clients)]
SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
LimiterDep = Annotated[RateLimiter, Depends(_limiter)]
TrafficDep = Annotated[Traffic, Depends(_traffic)]
# A `member_id` path parameter, as stored (see _stored_member_id).
MemberId = Annotated[str, Depends(_stored_member_id)]
