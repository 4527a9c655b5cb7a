"""Entry point: `python -m services.gateway` (uvicorn; stops gracefully on SIGTERM)."""

from __future__ import annotations

import uvicorn

from services.common.grpc_server import configure_logging, tune_gc
from services.common.settings import FleetSettings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def main() -> None:
    fleet = FleetSettings()
    configure_logging(fleet.log_level)
    app = create_app(fleet, GatewaySettings())
    tune_gc()
    uvicorn.run(
        app,
        host=fleet.gateway_host,
        port=fleet.gateway_port,
        log_level=fleet.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=5,
    )
