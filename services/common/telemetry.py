"""Logs and traces of every process: plain or JSON log lines, OpenTelemetry spans over OTLP.

Both are off the hot path unless asked for. Plain text logs and no tracing are the defaults
on one machine; a cluster sets `RECOFLEET_LOG_FORMAT=json` and `RECOFLEET_OTLP_ENDPOINT`.
Spans cross process boundaries with the standard instrumentations (FastAPI and gRPC), which
carry W3C trace context and baggage; the recommendation id travels as baggage, so that a
service's log line about a recommendation names it as the gateway's does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import baggage, context, trace
from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from fastapi import FastAPI

    from services.common.settings import FleetSettings

RECOMMENDATION_KEY = "recofleet.recommendation_id"
# Probes and scrapes come every few seconds from every replica: a span each would bury the
# requests someone wants to follow.
UNTRACED_URLS = "healthz,readyz,metrics"


@dataclass(frozen=True)
class Telemetry:
    """What a process was configured with: its interceptors depend on it."""

    service: str
    tracing: bool
    propagating: bool


_current = Telemetry(service="recofleet", tracing=False, propagating=False)


def configure_telemetry(service: str, fleet: FleetSettings) -> Telemetry:
    """Set up the process's logs and, with an OTLP endpoint, its tracer. Call once, first."""
    global _current
    configure_logging(fleet.log_level, fleet.log_format, service)
    tracing = fleet.otlp_endpoint is not None
    if tracing:
        _start_tracing(service, fleet)
    # JSON logs carry the recommendation id, which only the gRPC interceptors carry across.
    _current = Telemetry(service, tracing, propagating=tracing or fleet.log_format == "json")
    return _current


def configure_logging(level: str, log_format: str = "text", service: str = "recofleet") -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "{levelname}{name}{message}",
                style="{",
                rename_fields={"levelname": "level", "name": "logger"},
                static_fields={"service": service},
                timestamp="time",  # ISO 8601 in UTC, what log stores parse without a pattern
            )
        )
        handler.addFilter(TraceFields())
        # Libraries' warnings too, else they reach stderr as lines no log store can parse.
        logging.captureWarnings(True)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class TraceFields(logging.Filter):
    """Adds the trace and span ids of the current span and the recommendation id, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        recommendation = baggage.get_baggage(RECOMMENDATION_KEY)
        if recommendation:
            record.recommendation_id = recommendation
        return True


def _start_tracing(service: str, fleet: FleetSettings) -> None:
    # Imported here: a process with tracing off never loads the SDK and its exporter.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": f"recofleet-{service}"}),
        sampler=ParentBased(TraceIdRatioBased(fleet.trace_sample_ratio)),
    )
    # The exporter reads the rest of the standard OTEL_EXPORTER_OTLP_* settings itself
    # (headers, certificates, compression); the batch processor its OTEL_BSP_* ones.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=fleet.otlp_endpoint)))
    trace.set_tracer_provider(provider)


def shutdown_telemetry() -> None:
    """Send the spans still batched: a stopping service's last requests are worth seeing."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


def server_interceptors() -> list[Any]:
    """Interceptors of a gRPC server: a span per call, joined to the caller's trace."""
    if not _current.propagating:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    return [aio_server_interceptor(filter_=filters.negate(filters.health_check()))]


def client_interceptors() -> list[Any]:
    """Interceptors of a gRPC channel: a span per call, the trace context in its metadata."""
    if not _current.propagating:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors, filters

    return list(aio_client_interceptors(filter_=filters.negate(filters.health_check())))


def instrument_gateway(app: FastAPI) -> None:
    """A span per HTTP request, started from the caller's `traceparent` when it sends one."""
    if not _current.propagating:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=UNTRACED_URLS, server_request_hook=_without_personal_data
    )


# What the HTTP instrumentation records of a request (old and new semantic conventions):
# its URL, which names members, and the caller's address.
URL_ATTRIBUTES = ("http.target", "http.url", "url.full", "url.path", "url.query")
# A credential sent in the URL (GA4's Measurement Protocol puts its secret there).
SECRET_IN_URL = re.compile(r"((?:^|[?&])api_secret=)[^&#]*", re.IGNORECASE)
ADDRESS_ATTRIBUTES = ("net.peer.ip", "client.address", "http.client_ip", "net.sock.peer.addr")


def _without_personal_data(span: Any, scope: dict[str, Any]) -> None:
    """A request span's URL with the member ids and contact data in it as the stores keep
    them (tokens), an access key sent as `api_secret` redacted, and the caller's address cut
    to its network: a tracing backend is a store erasure does not reach, so nothing
    personal may go there in clear, nor a credential."""
    attributes = getattr(span, "attributes", None)
    if not attributes or not span.is_recording():
        return
    scrubber = getattr(scope["app"].state, "member_ids", None)
    for name in URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            value = SECRET_IN_URL.sub(r"\1[redacted]", value)
            span.set_attribute(name, scrubber.scrub_text(value) if scrubber else "")
    for name in ADDRESS_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, network_of(value))


def network_of(address: str) -> str:
    """An IP address with its host part zeroed (IPv4 /24, IPv6 /48), as analytics tools
    anonymise addresses; anything else (a host name) is dropped."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


@contextlib.contextmanager
def recommendation_context(recommendation_id: str) -> Iterator[None]:
    """Everything done for one recommendation carries its id: baggage sent with every call
    made inside, an attribute of the request's span, a field of every log line."""
    if not _current.propagating:
        yield
        return
    trace.get_current_span().set_attribute(RECOMMENDATION_KEY, recommendation_id)
    token = context.attach(baggage.set_baggage(RECOMMENDATION_KEY, recommendation_id))
    try:
        yield
    finally:
        context.detach(token)
