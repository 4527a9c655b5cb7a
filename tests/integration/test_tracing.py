"""One recommendation followed across the fleet: a trace from a real OTLP receiver, and
the JSON log lines of each process naming it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import RunningFleet, fleet_env, running_fleet
from tests.otlp_receiver import ReceivedSpan, TraceReceiver, trace_receiver

SERVER, CLIENT = 2, 3  # OTLP's span kinds
# What a personalized answer calls, each once at least (impressions are sent apart, later).
CALLED = ("recofleet-profiles", "recofleet-retrieval", "recofleet-campaigns", "recofleet-ranking")
KEY = "recofleet.recommendation_id"


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningFleet, TraceReceiver]]:
    data_dir = tmp_path_factory.mktemp("traced")
    with trace_receiver() as (receiver, endpoint):
        env = fleet_env(data_dir) | {
            "RECOFLEET_OTLP_ENDPOINT": endpoint,
            "RECOFLEET_LOG_FORMAT": "json",
            "RECOFLEET_LOG_LEVEL": "DEBUG",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
        with running_fleet(env, data_dir) as fleet:
            yield fleet, receiver


def recommend(fleet: RunningFleet, headers: dict[str, str] | None = None) -> dict:
    member_id = json.loads((fleet.data_dir / "loaded.json").read_text())["example_member"]
    with fleet.client() as http:
        reply = http.get(
            f"/v1/members/{member_id}/recommendations",
            params={"limit": 5},
            headers=headers or {},
        )
    assert reply.status_code == 200, reply.text
    body: dict = reply.json()
    assert not body["degraded"], body
    return body


def trace_of(receiver: TraceReceiver, recommendation_id: str) -> list[ReceivedSpan]:
    def complete(spans: list[ReceivedSpan]) -> bool:
        ids = {s.trace_id for s in spans if s.attributes.get(KEY) == recommendation_id}
        if not ids:
            return False
        served = {s.service for s in spans if s.trace_id in ids and s.kind == SERVER}
        return set(CALLED) <= served

    spans = receiver.wait_for(complete)
    ids = {s.trace_id for s in spans if s.attributes.get(KEY) == recommendation_id}
    assert len(ids) == 1, f"the recommendation is in {len(ids)} traces"
    return [s for s in spans if s.trace_id in ids]


def test_one_recommendation_is_one_trace_with_a_span_per_service_call(traced):
    fleet, receiver = traced
    body = recommend(fleet)
    spans = trace_of(receiver, body["recommendation_id"])

    roots = [s for s in spans if not s.parent_id]
    assert [(r.service, r.kind) for r in roots] == [("recofleet-gateway", SERVER)]
    by_id = {s.span_id: s for s in spans}
    served = [s for s in spans if s.kind == SERVER and s.service != "recofleet-gateway"]
    assert {s.service for s in served} >= set(CALLED)
    for span in served:
        caller = by_id.get(span.parent_id)
        assert caller is not None, f"{span.service} {span.name}: its caller's span is missing"
        assert (caller.service, caller.kind) == ("recofleet-gateway", CLIENT), span
        assert caller.name == span.name  # the same RPC, seen from both ends
    calls = [s for s in spans if s.kind == CLIENT and s.service == "recofleet-gateway"]
    assert len(calls) == len(served), "a gateway call without the service's span, or more"


def test_a_callers_traceparent_is_continued(traced):
    fleet, receiver = traced
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    body = recommend(fleet, {"traceparent": f"00-{trace_id}-{parent}-01"})
    spans = trace_of(receiver, body["recommendation_id"])
    assert {s.trace_id for s in spans} == {trace_id}
    gateway = next(s for s in spans if s.service == "recofleet-gateway" and s.kind == SERVER)
    assert gateway.parent_id == parent


def log_lines(fleet: RunningFleet, service: str) -> list[dict]:
    text = (fleet.data_dir / "logs" / f"{service}.log").read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"{service}.log has a line that is not JSON: {line[:200]}")
    return parsed


def test_json_logs_name_the_recommendation_and_its_trace_in_every_process(traced):
    fleet, receiver = traced
    body = recommend(fleet)
    spans = trace_of(receiver, body["recommendation_id"])
    trace_id = spans[0].trace_id
    for service in ("gateway", *(name.removeprefix("recofleet-") for name in CALLED)):
        lines = log_lines(fleet, service)
        assert all({"time", "level", "logger", "message", "service"} <= set(x) for x in lines)
        if service not in ("gateway", "ranking"):
            continue  # only these two log a recommendation (at debug level)
        about = [x for x in lines if x.get("recommendation_id") == body["recommendation_id"]]
        assert about, f"no {service} log line names {body['recommendation_id']}"
        assert {x["trace_id"] for x in about} == {trace_id}
        assert {x["service"] for x in about} == {service}


def test_request_spans_hold_no_address_or_phone_number_in_clear(traced):
    fleet, receiver = traced
    member = f"ann.trace.{secrets.token_hex(3)}@example.com"
    with fleet.client() as http:
        http.get(f"/v1/members/{member}/recommendations", params={"context_item": member})
        http.get(f"/v1/members/{member.replace('@', '%40')}/profile")
        http.get("/v1/items/85123A/similar", params={"member_id": "+44 7700 900461"})

    def asked(spans: list[ReceivedSpan]) -> bool:
        routes = [s for s in spans if s.service == "recofleet-gateway" and s.kind == SERVER]
        return sum("similar" in s.name for s in routes) >= 1 and len(routes) >= 3

    spans = receiver.wait_for(asked)
    assert asked(spans), "the gateway's request spans did not arrive"
    local = member.split("@")[0]
    for span in spans:
        for name, value in span.attributes.items():
            assert local not in value and "7700 900461" not in value, (span.name, name, value)
            assert "7700%20900461" not in value and "7700+900461" not in value, (name, value)
    # The caller's address, on the gateway's request spans (the services' calls name the
    # services' own addresses): cut to its network.
    requests = [s for s in spans if s.service == "recofleet-gateway" and s.kind == SERVER]
    addresses = {
        value
        for span in requests
        for name, value in span.attributes.items()
        if name in ("net.peer.ip", "client.address")
    }
    assert addresses and all(a.endswith(".0") for a in addresses), addresses


def test_an_access_key_sent_as_ga4s_api_secret_reaches_no_span(traced):
    fleet, receiver = traced
    key = fleet.new_key("events:write", name="ga4 tracing")
    body = {"client_id": "c.1", "events": [{"name": "view_item", "params": {"items": []}}]}
    with httpx.Client(base_url=fleet.url, timeout=10.0) as sender:
        sender.post("/mp/collect", params={"measurement_id": "G-1", "api_secret": key}, json=body)

    def collected(spans: list[ReceivedSpan]) -> bool:
        return any(s.service == "recofleet-gateway" and "/mp/collect" in s.name for s in spans)

    spans = receiver.wait_for(collected)
    assert collected(spans), "the gateway's request span did not arrive"
    secret = key.split("_", 2)[2]  # rf_<id>_<secret>: the part that grants
    for span in spans:
        for name, value in span.attributes.items():
            assert secret not in value, (span.name, name, value)
    targets = [
        value
        for span in spans
        if "/mp/collect" in span.name
        for name, value in span.attributes.items()
        if "api_secret" in value
    ]
    assert targets and all("api_secret=[redacted]" in t for t in targets), targets
