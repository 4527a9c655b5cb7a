"""Serve a gRPC service with grpc.aio: standard health checking, graceful stop on SIGTERM.

Health is reported honestly: a probe callback decides SERVING or NOT_SERVING and is
re-evaluated every second, so a dead consumer thread or a missing model shows up in
`grpc_health_probe` and Kubernetes readiness probes instead of being masked.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.metrics import MeteredCalls, serve_metrics
from services.common.telemetry import (
    client_interceptors,
    server_interceptors,
    shutdown_telemetry,
)

log = logging.getLogger(__name__)

Registrar = Callable[[grpc.aio.Server], None]


class HealthReporter:
    """Publishes the service's health under its full name and the server-wide "" name."""

    def __init__(self, service_name: str, probe: Callable[[], bool]) -> None:
        self.servicer = health.aio.HealthServicer()
        self._names = (service_name, "")
        self._probe = probe

    async def refresh(self) -> bool:
        ok = _safe(self._probe)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._names:
            await self.servicer.set(name, status)
        return ok

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()


def _safe(probe: Callable[[], bool]) -> bool:
    try:
        return bool(probe())
    except Exception:
        log.exception("health probe failed")
        return False


# gRPC refuses messages over 4 MiB by default, below the gateway's body limit (5 MB): a
# request the gateway accepted must never fail between two services for its size.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MESSAGE_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def open_channel(address: str) -> grpc.aio.Channel:
    """A channel from one service to another: large messages, and traced when asked."""
    return grpc.aio.insecure_channel(
        address, options=MESSAGE_OPTIONS, interceptors=client_interceptors()
    )


async def serve(
    *,
    service_name: str,
    address: str,
    register: Registrar,
    probe: Callable[[], bool],
    on_stop: Callable[[], Awaitable[None]] | None = None,
    grace_s: float = 5.0,
    metrics_offset: int = 0,
) -> None:
    """Run until SIGTERM or SIGINT, then stop accepting calls and finish those in flight.
    With a `metrics_offset`, Prometheus metrics are served on the gRPC port plus it."""
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), *MESSAGE_OPTIONS],
        interceptors=[*server_interceptors(), MeteredCalls()],
    )
    register(server)
    reporter = HealthReporter(service_name, probe)
    health_pb2_grpc.add_HealthServicer_to_server(reporter.servicer, server)
    if server.add_insecure_port(address) == 0:
        raise SystemExit(f"{service_name}: cannot listen on {address}")
    await server.start()
    serve_metrics(address, metrics_offset)
    tune_gc()
    log.info("%s listening on %s", service_name, address)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await _report_until(stopping, reporter)

    log.info("%s stopping", service_name)
    await reporter.shutdown()
    await server.stop(grace_s)
    if on_stop:
        await on_stop()
    shutdown_telemetry()
    log.info("%s stopped", service_name)


async def _report_until(stopping: asyncio.Event, reporter: HealthReporter) -> None:
    while not stopping.is_set():
        await reporter.refresh()
        try:
            await asyncio.wait_for(stopping.wait(), timeout=1.0)
        except TimeoutError:
            continue


# Young collections every 20,000 net allocations instead of 700: a consumer decodes a batch
# of thousands of events at once, and the default made the collector run through every
# batch many times (a third of the CPU a profiles batch cost, measured by bench.stages).
GC_THRESHOLDS = (20_000, 50, 100)


def tune_gc() -> None:
    """Tell the garbage collector that start-up is over and work is made of large batches.

    Freezing moves everything made so far (modules, schemas, engines) out of reach of
    later collections, which then only walk what requests and batches allocate.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
