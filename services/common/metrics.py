"""Prometheus metrics every service exposes on a port of its own (docs/deploy.md).

- `recofleet_rpc_requests_total` and `recofleet_rpc_duration_seconds`: per gRPC method and
  status code, from a server interceptor;
- `recofleet_consumer_records_total`: records each consumer group applied or dead-lettered;
- `recofleet_consumer_lag`: per group, topic and partition, read from the bus when scraped
  (so an idle service costs nothing between scrapes);
- `recofleet_model_info`: the model version a service serves, set by the service.

The port is the service's gRPC port plus `FleetSettings.metrics_port_offset` (100:
50151 for ingestion ... 50156 for analytics); 0 turns the endpoint off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from services.common.bus import BusError, EventBus

log = logging.getLogger(__name__)

RPC_REQUESTS = Counter(
    "recofleet_rpc_requests_total", "gRPC calls answered, by method and status.", ["method", "code"]
)
RPC_DURATION = Histogram(
    "recofleet_rpc_duration_seconds",
    "Time to answer a gRPC call, by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
CONSUMED = Counter(
    "recofleet_consumer_records_total",
    "Bus records a consumer group handled, by outcome (applied, dead_lettered).",
    ["group", "outcome"],
)
MODEL = Gauge("recofleet_model_info", "The model version served (value 1).", ["model", "version"])


def serve_metrics(address: str, offset: int) -> int | None:
    """Start the metrics endpoint beside the gRPC `address` (host:port); its port, or None
    when `offset` is 0."""
    if offset <= 0:
        return None
    host, _, port = address.rpartition(":")
    metrics_port = int(port) + offset
    try:
        start_http_server(metrics_port, addr=host.strip("[]") or "0.0.0.0")
    except OSError as exc:
        # A port taken is no reason to refuse the service's own work.
        log.error("no metrics endpoint on %s:%d: %s", host, metrics_port, exc)
        return None
    log.info("metrics on %s:%d/metrics", host, metrics_port)
    return metrics_port


_SERVED: dict[str, str] = {}


def model_served(model: str, version: str) -> None:
    """Say which version of `model` this process serves now (the one before is dropped)."""
    before = _SERVED.get(model)
    if before is not None and before != version:
        MODEL.remove(model, before)
    MODEL.labels(model, version).set(1)
    _SERVED[model] = version


class MeteredCalls(grpc.aio.ServerInterceptor):
    """Counts and times every unary call (streams are counted when they start).

    The wrapped handler of a method is made once and kept: rebuilding it on every call
    cost more than the measuring itself."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        path = handler_call_details.method
        wrapped = self._wrapped.get(path)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        method = path.rsplit("/", 1)[-1]
        if handler is None or handler.unary_unary is None:
            if handler is not None:
                RPC_REQUESTS.labels(method, "STREAM").inc()
            return handler
        wrapped = grpc.unary_unary_rpc_method_handler(
            _timed(handler.unary_unary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[path] = wrapped
        return wrapped


def _timed(behaviour: Callable[..., Any], method: str) -> Callable[..., Awaitable[Any]]:
    duration = RPC_DURATION.labels(method)
    answered = RPC_REQUESTS.labels(method, "OK")

    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        try:
            found = await behaviour(request, context)
        except BaseException:
            RPC_REQUESTS.labels(method, _code(context)).inc()
            raise
        finally:
            duration.observe(time.perf_counter() - started)
        answered.inc()
        return found

    return timed


def _code(context: grpc.aio.ServicerContext) -> str:
    found = context.code()
    return found.name if isinstance(found, grpc.StatusCode) else "UNKNOWN"


class Subscribed(Protocol):
    """What the lag collector needs of a consumer group member (a BusWorker)."""

    @property
    def bus(self) -> EventBus: ...

    @property
    def group(self) -> str: ...

    @property
    def topics(self) -> Sequence[str]: ...

    @property
    def commits(self) -> bool: ...


class ConsumerLag(Collector):
    """`recofleet_consumer_lag` of the consumer groups running in this process, read from
    the bus at scrape time. Groups that never commit (state rebuilt in memory) have none."""

    def __init__(self) -> None:
        self._workers: dict[int, Subscribed] = {}
        self._lock = threading.Lock()

    def track(self, worker: Subscribed) -> None:
        with self._lock:
            self._workers[id(worker)] = worker

    def untrack(self, worker: Subscribed) -> None:
        with self._lock:
            self._workers.pop(id(worker), None)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "recofleet_consumer_lag",
            "Records on the bus a consumer group has not committed yet.",
            labels=["group", "topic", "partition"],
        )
        with self._lock:
            workers = [w for w in self._workers.values() if w.commits]
        for worker in workers:
            for topic in worker.topics:
                for partition, lag in _lag(worker, topic).items():
                    family.add_metric([worker.group, topic, str(partition)], lag)
        yield family


def _lag(worker: Subscribed, topic: str) -> dict[int, int]:
    try:
        return worker.bus.partition_lag(worker.group, topic)
    except BusError as exc:
        log.warning("lag of %s on %s unknown: %s", worker.group, topic, exc)
        return {}


LAG = ConsumerLag()
REGISTRY.register(LAG)


class Cached(Protocol):
    hits: int
    misses: int

    def __len__(self) -> int: ...


class CacheFigures(Collector):
    """Entries and lookups of the in-memory caches a process watches, read at each scrape:
    a counter bumped on every lookup would cost the hot path what the cache saves."""

    def __init__(self) -> None:
        self._caches: dict[str, Cached] = {}

    def watch(self, name: str, cache: Cached) -> None:
        self._caches[name] = cache

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        entries = GaugeMetricFamily(
            "recofleet_cache_entries", "Entries an in-memory cache holds.", labels=["cache"]
        )
        lookups = CounterMetricFamily(
            "recofleet_cache_lookups",
            "Lookups of an in-memory cache, by outcome (hit, miss).",
            labels=["cache", "outcome"],
        )
        for name, cache in list(self._caches.items()):
            entries.add_metric([name], len(cache))
            lookups.add_metric([name, "hit"], cache.hits)
            lookups.add_metric([name, "miss"], cache.misses)
        yield entries
        yield lookups


CACHES = CacheFigures()
REGISTRY.register(CACHES)
