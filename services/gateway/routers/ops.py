"""What operators and orchestrators ask: liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.deps import ClientsDep
from services.gateway.schemas import HealthOut, NotReadyOut, ReadinessOut

router = APIRouter(tags=["ops"])


@router.get("/healthz", operation_id="healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """The gateway process answers (liveness)."""
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    operation_id="readyz",
    response_model=ReadinessOut,
    responses={
        503: {
            "model": NotReadyOut,
            "description": "Some service does not report SERVING (each one's status is listed).",
        }
    },
)
async def readyz(clients: ClientsDep) -> JSONResponse:
    """Ready when every service reports SERVING on the standard gRPC health check."""
    services = await clients.health()
    waiting = {name: status for name, status in services.items() if status != "SERVING"}
    if not waiting:
        return JSONResponse({"status": "ready", "services": services})
    detail = "not ready: " + ", ".join(f"{name} {status}" for name, status in waiting.items())
    return JSONResponse(
        {"status": "not ready", "services": services, "detail": detail}, status_code=503
    )


@router.get(
    "/metrics",
    operation_id="metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition: requests, latency, degraded answers.",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
