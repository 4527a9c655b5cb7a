"""What keeps a recommendation fast when the fleet is not: one time budget per request,
a circuit breaker per downstream service, and a cap on requests composed at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import Gauge

from services.gateway.settings import Breakers as BreakerSettings

log = logging.getLogger(__name__)
BREAKER_OPEN = Gauge(
    "recofleet_gateway_breaker_open",
    "1 while the gateway does not call a service (it failed repeatedly), else 0.",
    ["service"],
)
# Codes that say the service, not the request, is at fault.
FAILURES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
# Whether a service answers, within the timeout given (seconds).
Probe = Callable[[float], Coroutine[Any, Any, bool]]
# Less time than this left is not worth a call: the answer could not come back in time.
MIN_CALL_S = 0.002


class Budget:
    """What is left of one request's time; every downstream call must fit in it."""

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + total_s

    def timeout(self, per_call_s: float) -> float | None:
        """The call's timeout: its own deadline or what is left, whichever is shorter; None
        when too little is left to make the call at all."""
        left = self._end - self._clock()
        if left < MIN_CALL_S:
            return None
        return min(per_call_s, left)


class Breaker:
    """Closed: calls go through. After `failures` failures in a row it opens: calls are
    skipped (the answer degrades at once) while a background probe health-checks the
    service, and the first SERVING answer closes it again."""

    def __init__(
        self,
        service: str,
        probe: Probe,
        settings: BreakerSettings,
    ) -> None:
        self.service = service
        self._probe = probe
        self._settings = settings
        self._failures = 0
        self._prober: asyncio.Task[None] | None = None
        BREAKER_OPEN.labels(service).set(0)

    @property
    def open(self) -> bool:
        return self._prober is not None

    def succeeded(self) -> None:
        self._failures = 0

    def failed(self, code: grpc.StatusCode) -> None:
        if code not in FAILURES:
            return
        self._failures += 1
        if self._failures >= self._settings.failures and self._prober is None:
            log.warning(
                "%s failed %d times in a row (%s): not calling it until it answers a health check",
                self.service,
                self._failures,
                code.name,
            )
            BREAKER_OPEN.labels(self.service).set(1)
            self._prober = asyncio.get_running_loop().create_task(self._until_back())

    async def _until_back(self) -> None:
        while True:
            await asyncio.sleep(self._settings.probe_interval_s)
            if await self._probe(self._settings.probe_timeout_s):
                break
        log.warning("%s answers again: calling it again", self.service)
        self._failures = 0
        self._prober = None
        BREAKER_OPEN.labels(self.service).set(0)

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None


def health_probe(channel: grpc.aio.Channel) -> Probe:
    """Whether the service behind the channel answers SERVING within the timeout."""
    stub = health_pb2_grpc.HealthStub(channel)

    async def probe(timeout_s: float) -> bool:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    return probe


class InFlight:
    """Counts requests being composed; `full` past the cap, so that the caller answers
    cheaply instead of adding to a queue."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.now = 0

    @property
    def full(self) -> bool:
        return self.now >= self.limit

    def __enter__(self) -> InFlight:
        self.now += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.now -= 1
