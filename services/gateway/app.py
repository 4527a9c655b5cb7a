"""The FastAPI application: built from settings passed in, so tests can build their own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.pii import PiiScrubber, pii_secret
from services.common.settings import FleetSettings
from services.common.telemetry import instrument_gateway
from services.gateway.access_keys import AccessKeyStore, open_key_store, seed_env_key
from services.gateway.auth import KeyVerifier, document_scopes, route_scopes
from services.gateway.clients import FleetClients
from services.gateway.compose import Composer
from services.gateway.console import mount_console
from services.gateway.impressions import ImpressionLog
from services.gateway.limits import RateLimiter
from services.gateway.responses import complete
from services.gateway.routers import (
    access,
    campaigns,
    events,
    experiments,
    ga4,
    items,
    members,
    models,
    ops,
    overview,
    rules,
    segment,
    segments,
)
from services.gateway.settings import GatewaySettings
from services.gateway.traffic import Traffic
from services.gen.recofleet.ingestion.v1 import ingestion_pb2

log = logging.getLogger(__name__)
REQUESTS = Counter(
    "recofleet_gateway_requests_total", "HTTP requests answered.", ["route", "method", "status"]
)
LATENCY = Histogram(
    "recofleet_gateway_request_seconds",
    "Time to answer an HTTP request.",
    ["route", "method"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


def impression_log(
    clients: FleetClients, settings: GatewaySettings, fleet: FleetSettings
) -> ImpressionLog:
    """The log of every answer, sent through ingestion like any event."""

    async def publish(payload: bytes) -> ingestion_pb2.PublishEventsResponse:
        request = ingestion_pb2.PublishEventsRequest(payload=payload, format="native")
        reply: ingestion_pb2.PublishEventsResponse = await clients.ingestion.PublishEvents(
            request, timeout=settings.impressions.publish_timeout_s
        )
        return reply

    return ImpressionLog(publish, settings.impressions, fleet.clock())


def create_app(
    fleet: FleetSettings, settings: GatewaySettings, key_store: AccessKeyStore | None = None
) -> FastAPI:
    """The gateway; its access keys in `key_store`, else in the store the settings name."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = key_store or open_key_store(fleet, settings)
        _check_keys(keys, settings)
        app.state.access_keys = KeyVerifier(keys)
        clients = FleetClients.connect(fleet)
        composer = Composer(clients, settings)
        app.state.clients, app.state.composer, app.state.settings = clients, composer, settings
        app.state.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        # Path member ids are tokenised as ingestion tokenises events' (an email is stored as
        # its token): the same secret, so `/v1/members/jane@example.com/...` finds Jane.
        app.state.member_ids = PiiScrubber(pii_secret(fleet))
        refresher = asyncio.create_task(_keep_popular_fresh(composer, settings.popular_refresh_s))
        impressions = impression_log(clients, settings, fleet)
        if settings.impressions.enabled:
            # Unset, the composer gathers nothing for it on each answer.
            composer.shown = impressions.record
        sender = asyncio.create_task(impressions.run())
        yield
        refresher.cancel()
        await impressions.close()
        sender.cancel()
        await composer.close()
        await clients.close()
        if key_store is None:
            keys.close()

    app = FastAPI(
        title="recofleet gateway",
        version="0.1.0",
        description="Events in, member profiles, recommendations and offers out.",
        lifespan=lifespan,
    )
    routers = (events, segment, ga4, members, segments, items, models, experiments, campaigns, ops)
    for router in (module.router for module in routers):
        app.include_router(router)
    app.include_router(rules.router)
    app.include_router(access.router)
    app.include_router(overview.router)
    # Made with the app, not in the lifespan: what this replica handled, from its first request.
    app.state.traffic = Traffic(fleet.clock())
    mount_console(app)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(Measured)
    instrument_gateway(app)
    app.openapi = _completed(app, app.openapi, settings)  # type: ignore[method-assign]
    return app


def _check_keys(keys: AccessKeyStore, settings: GatewaySettings) -> None:
    """Seed RECOFLEET_ADMIN_KEY when it is set (every replica may: it is idempotent), and say
    so in the log when no key can pass."""
    if settings.admin_key is not None:
        seeded = seed_env_key(keys, settings.admin_key.get_secret_value())
        if seeded.note:
            log.warning("%s", seeded.note)
    if not any(key.active for key in keys.all()):
        log.warning(
            "no active access key yet: /v1 requests are refused (401) until one is made with "
            "`recofleet keys create --scope admin` or RECOFLEET_ADMIN_KEY"
        )


def _completed(
    app: FastAPI, build: Callable[[], dict[str, Any]], settings: GatewaySettings
) -> Callable[[], dict[str, Any]]:
    """FastAPI's document (built once), completed with what FastAPI cannot know of."""

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        document = build()
        if first:
            complete(document, settings.max_limit)
            document_scopes(document, route_scopes(app))
        return document

    return openapi


async def _keep_popular_fresh(composer: Composer, interval_s: float) -> None:
    while True:
        try:
            await composer.refresh_popular()
        except grpc.aio.AioRpcError as exc:
            log.info("popular items not refreshed yet: %s", exc.code().name)
            await asyncio.sleep(min(interval_s, 2.0))
            continue
        await asyncio.sleep(interval_s)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        f"{'.'.join(str(p) for p in e['loc'] if p not in ('query', 'path', 'body'))}: {e['msg']}"
        for e in exc.errors()
    ]
    return JSONResponse({"detail": "; ".join(problems)}, status_code=422)


class Measured:
    """Counts and times every request, and answers what a route failed to (a JSON 500).

    Plain ASGI, not Starlette's BaseHTTPMiddleware: that one runs every request through an
    extra task and memory streams, which cost more than the gateway's own work here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        answered = False

        async def sending(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status, answered = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("unhandled error answering %s %s", scope["method"], scope["path"])
            if answered:
                raise  # the answer had begun: nothing better to send than a dropped stream
            # Answered here, not re-raised: the server would send a plain-text 500 and drop
            # the keep-alive connection, failing the client's next request too.
            error = JSONResponse({"detail": "internal error: the gateway logged it"}, 500)
            await error(scope, receive, send)
            status = 500
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        LATENCY.labels(path, scope["method"]).observe(time.perf_counter() - started)
        REQUESTS.labels(path, scope["method"], str(status)).inc()
