"""Log lines as JSON carry the trace and the recommendation; off, nothing is intercepted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.common import telemetry
from services.common.settings import FleetSettings


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    monkeypatch.setattr(telemetry, "_current", telemetry._current)
    telemetry.configure_telemetry("ranking", FleetSettings(log_format="json"))
    out = io.StringIO()
    root.handlers[0].setStream(out)  # type: ignore[attr-defined]
    yield out
    root.handlers[:], root.level = saved, level
    logging.captureWarnings(False)


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_line_inside_a_recommendation_names_it_and_its_trace(json_log: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("GET recommendations") as span:
        with telemetry.recommendation_context("r-42"):
            logging.getLogger("services.ranking").warning("ranked %d", 3)
        logging.getLogger("services.ranking").warning("after")
    inside, after = lines(json_log)
    assert inside["message"] == "ranked 3"
    assert inside["level"] == "WARNING" and inside["service"] == "ranking"
    assert inside["recommendation_id"] == "r-42"
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "recommendation_id" not in after and after["trace_id"] == inside["trace_id"]
    assert span.attributes[telemetry.RECOMMENDATION_KEY] == "r-42"  # type: ignore[index]


def test_a_line_outside_any_trace_has_no_ids(json_log: io.StringIO) -> None:
    logging.getLogger("x").error("alone")
    (line,) = lines(json_log)
    assert line["message"] == "alone" and "trace_id" not in line
    assert line["time"].endswith("+00:00")


def test_text_logs_and_no_endpoint_add_no_interceptor(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    monkeypatch.setattr(telemetry, "_current", telemetry._current)
    try:
        configured = telemetry.configure_telemetry("profiles", FleetSettings())
        assert not configured.tracing and not configured.propagating
        assert telemetry.server_interceptors() == [] and telemetry.client_interceptors() == []
        telemetry.configure_telemetry("profiles", FleetSettings(log_format="json"))
        assert len(telemetry.client_interceptors()) == 4  # unary and stream, both ways
        assert len(telemetry.server_interceptors()) == 1
    finally:
        root.handlers[:], root.level = saved, level
        logging.captureWarnings(False)
