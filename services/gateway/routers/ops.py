"""What operators and orchestrators ask: liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.deps import ClientsDep

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The gateway process answers (liveness)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(clients: ClientsDep) -> JSONResponse:
    """Ready when every service reports SERVING on the standard gRPC health check."""
    services = await clients.health()
    ready = all(status == "SERVING" for status in services.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "services": services},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
