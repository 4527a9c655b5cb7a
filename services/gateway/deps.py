"""FastAPI dependencies: what routers get from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from services.gateway.clients import FleetClients
from services.gateway.compose import Composer
from services.gateway.limits import RateLimiter
from services.gateway.settings import GatewaySettings


def _composer(request: Request) -> Composer:
    composer: Composer = request.app.state.composer
    return composer


def _clients(request: Request) -> FleetClients:
    clients: FleetClients = request.app.state.clients
    return clients


def _limiter(request: Request) -> RateLimiter:
    limiter: RateLimiter = request.app.state.limiter
    return limiter


def _settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


def checked_limit(limit: int, settings: GatewaySettings) -> int:
    """The `limit` asked for, refused with 422 past the configured maximum."""
    if limit > settings.max_limit:
        raise HTTPException(422, f"limit must be at most {settings.max_limit}")
    return limit


ComposerDep = Annotated[Composer, Depends(_composer)]
ClientsDep = Annotated[FleetClients, Depends(_clients)]
SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
LimiterDep = Annotated[RateLimiter, Depends(_limiter)]
