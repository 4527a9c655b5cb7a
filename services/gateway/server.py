"""Entry point: `python -m services.gateway` (uvicorn; stops gracefully on SIGTERM)."""

from __future__ import annotations

from typing import Any

import uvicorn

from services.common.grpc_server import tune_gc
from services.common.settings import FleetSettings
from services.common.telemetry import configure_telemetry, shutdown_telemetry
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def main() -> None:
    fleet = FleetSettings()
    configure_telemetry("gateway", fleet)
    settings = GatewaySettings()
    app = create_app(fleet, settings)
    tune_gc()
    uvicorn.run(app, **server_options(fleet, settings))
    shutdown_telemetry()


# uvicorn's event loop and HTTP parser, in C (the benchmark's ceiling app uses them too).
WEB_STACK: dict[str, Any] = {"loop": "uvloop", "http": "httptools"}


def server_options(fleet: FleetSettings, settings: GatewaySettings) -> dict[str, Any]:
    """uvicorn's options. Forwarding headers are believed from the trusted proxies only:
    uvicorn's own default (believe 127.0.0.1) would let any local caller pick its address,
    and with it the rate-limit bucket it is counted in."""
    proxies = settings.trusted_proxy_list
    return WEB_STACK | {
        "host": fleet.gateway_host,
        "port": fleet.gateway_port,
        "log_level": fleet.log_level.lower(),
        "access_log": False,
        # uvicorn's own logging setup would print its lines past the fleet's (JSON) format.
        "log_config": None,
        "timeout_graceful_shutdown": 5,
        "limit_concurrency": settings.max_connections,
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": proxies,
    }
