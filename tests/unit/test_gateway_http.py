"""The gateway's HTTP edge in process: content types, credentials, errors, ingestion's statuses.

The app is the real one (`create_app`); only the ingestion stub behind it is a fake that
records payloads and answers real protobuf replies, or raises the gRPC error it is told to.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import create_engine
from sqlalchemy.pool import StaticPool

from services.common.pii import PiiScrubber
from services.common.settings import FleetSettings
from services.gateway.access_keys import SqlAccessKeyStore, create_key, seed_env_key
from services.gateway.app import create_app
from services.gateway.auth import KeyVerifier
from services.gateway.limits import RateLimiter
from services.gateway.settings import GatewaySettings
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ingestion.v1 import ingestion_pb2

WRITE_KEY = "wk-unit-tests"
# The admin access key every request of these tests carries unless it says otherwise.
ADMIN_KEY = "unit-tests-admin-key-0123456789abcdef"
PII_SECRET = b"unit-tests-pii-secret-0123456789abcdef"
EVENT = {"type": "view", "member_id": "m-1", "item_id": "85123A"}


def rpc_error(code: grpc.StatusCode, details: str = "refused") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeIngestion:
    """Accepts every request (one id per call) unless told to raise or to reject."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.formats: list[str] = []
        self.error: BaseException | None = None
        self.reject = False

    def _called(self, payload: bytes) -> None:
        self.payloads.append(payload)
        if self.error is not None:
            raise self.error

    async def PublishEvents(
        self, request: ingestion_pb2.PublishEventsRequest, timeout: float | None = None
    ) -> ingestion_pb2.PublishEventsResponse:
        self._called(request.payload)
        self.formats.append(request.format)
        if self.reject:
            return ingestion_pb2.PublishEventsResponse(
                rejected=[common_pb2.Rejection(index=0, id="", reason="event: no type")]
            )
        return ingestion_pb2.PublishEventsResponse(accepted_event_ids=["e-1"], ignored=1)

    async def UpsertItems(
        self, request: ingestion_pb2.UpsertItemsRequest, timeout: float | None = None
    ) -> ingestion_pb2.UpsertItemsResponse:
        self._called(request.payload)
        if self.reject:
            return ingestion_pb2.UpsertItemsResponse(
                rejected=[common_pb2.Rejection(index=0, id="", reason="item: no item_id")]
            )
        return ingestion_pb2.UpsertItemsResponse(accepted_item_ids=["85123A"])


class FakeClients:
    def __init__(self) -> None:
        self.ingestion = FakeIngestion()


def settings(**overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {"segment_write_key": SecretStr(WRITE_KEY), "max_body_bytes": 4096}
    values.update(overrides)
    return GatewaySettings(**values)


def memory_key_store() -> SqlAccessKeyStore:
    """An access key store in memory: one SQLite connection, shared by the worker threads."""
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    return SqlAccessKeyStore(engine)


def app_with(
    gateway_settings: GatewaySettings,
    clients: FakeClients,
    keys: SqlAccessKeyStore | None = None,
    **verifier: Any,
) -> Any:
    """The real app, its state set as the lifespan would, with fake stubs (no lifespan run):
    access keys in `keys` (a store in memory by default), ADMIN_KEY among them."""
    app = create_app(FleetSettings(), gateway_settings)
    app.state.clients = clients
    app.state.settings = gateway_settings
    app.state.limiter = RateLimiter(
        gateway_settings.rate_limit_per_s, gateway_settings.rate_limit_burst
    )
    keys = keys or memory_key_store()
    seed_env_key(keys, ADMIN_KEY)
    app.state.access_keys = KeyVerifier(keys, **verifier)
    app.state.member_ids = PiiScrubber(PII_SECRET)
    return app


class Gateway:
    """The app and a client of it that sends ADMIN_KEY (as X-API-Key, so that a test's own
    Authorization header, Segment's basic auth say, does not replace it)."""

    def __init__(self, gateway_settings: GatewaySettings, **verifier: Any) -> None:
        self.clients = FakeClients()
        self.keys = memory_key_store()
        self.app = app_with(gateway_settings, self.clients, self.keys, **verifier)
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://gateway",
            headers={"x-api-key": ADMIN_KEY},
        )

    @property
    def ingestion(self) -> FakeIngestion:
        return self.clients.ingestion


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    running = Gateway(settings())
    async with running.http:
        yield running


def basic(user: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def assert_error(reply: httpx.Response, status: int, *fragments: str) -> str:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert isinstance(body, dict) and isinstance(body["detail"], str), body
    for fragment in fragments:
        assert fragment in body["detail"]
    return str(body["detail"])


# --- content types -----------------------------------------------------------------------

ACCEPTED_TYPES = [
    None,
    "application/json",
    "application/json; charset=utf-8",
    'Application/JSON; Charset="UTF-8"',
    "application/vnd.api+json",
    "application/cloudevents+json; charset=utf-8",
    "text/plain;charset=UTF-8",  # navigator.sendBeacon with a string
    "text/plain",
    "application/x-ndjson",
    "application/jsonl",
]
REFUSED_TYPES = [
    "application/x-www-form-urlencoded",  # what a plain `curl -d` sends
    "multipart/form-data; boundary=x",
    "text/html",
    "application/xml",
    "application/octet-stream",
    "json",
    "application/json; charset=iso-8859-1",
    "text/plain; charset=utf-16",
]


def with_type(content_type: str | None) -> dict[str, str]:
    return {} if content_type is None else {"content-type": content_type}


@pytest.mark.parametrize("content_type", ACCEPTED_TYPES)
async def test_json_and_what_browsers_send_is_read(gateway: Gateway, content_type: str | None):
    body = json.dumps(EVENT).encode()
    reply = await gateway.http.post("/v1/events", content=body, headers=with_type(content_type))
    assert reply.status_code == 202, reply.text
    assert gateway.ingestion.payloads == [body]


@pytest.mark.parametrize("content_type", REFUSED_TYPES)
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/events", {}),
        ("PUT", "/v1/items", {}),
        ("POST", "/segment/v1/batch", basic(WRITE_KEY)),
        ("POST", "/segment/v1/track", basic(WRITE_KEY)),
    ],
)
async def test_other_content_types_are_refused_with_415(
    gateway: Gateway, content_type: str, method: str, path: str, headers: dict[str, str]
):
    reply = await gateway.http.request(
        method, path, content=b'{"a": 1}', headers={**headers, "content-type": content_type}
    )
    if "charset" in content_type:
        assert_error(reply, 415, "charset", "utf-8")
    else:
        assert_error(
            reply, 415, "application/json", "text/plain", "-H 'content-type: application/json'"
        )
    assert gateway.ingestion.payloads == []


# --- what ingestion answers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.OUT_OF_RANGE, 413),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 503),
        (grpc.StatusCode.CANCELLED, 503),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.FAILED_PRECONDITION, 500),
        (grpc.StatusCode.UNIMPLEMENTED, 500),
    ],
)
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/events", {}),
        ("PUT", "/v1/items", {}),
        ("POST", "/segment/v1/batch", basic(WRITE_KEY)),
    ],
)
async def test_ingestion_statuses_become_http_statuses(
    gateway: Gateway,
    code: grpc.StatusCode,
    status: int,
    method: str,
    path: str,
    headers: dict[str, str],
):
    gateway.ingestion.error = rpc_error(code, "the reason ingestion gave")
    reply = await gateway.http.request(method, path, json={"batch": [EVENT]}, headers=headers)
    detail = assert_error(reply, status)
    if status in (400, 413):
        assert detail == "the reason ingestion gave"
    elif status == 503 and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        # Ingestion may have published just as the gateway stopped waiting: never "nothing
        # was accepted", and a retry is right (events are applied once per event_id).
        assert detail.startswith(f"ingestion did not answer in time ({code.name})")
        assert "may have accepted" in detail and "event_id" in detail
        assert reply.headers["retry-after"] == "1"
    elif status == 503:
        assert detail == f"ingestion unavailable ({code.name}); retry"
        assert reply.headers["retry-after"] == "1"
    else:
        # A bug on this request: say so, and do not invite the client to send it again.
        assert code.name in detail and "will not help" in detail
        assert "the reason ingestion gave" not in detail


async def test_an_unhandled_error_is_a_json_500_not_a_dropped_connection(gateway: Gateway):
    gateway.ingestion.error = RuntimeError("a bug")
    # ASGITransport re-raises what escapes the app: reaching the assert means nothing did.
    reply = await gateway.http.post("/v1/events", json=EVENT)
    assert_error(reply, 500, "internal error")
    assert "a bug" not in reply.text
    gateway.ingestion.error = None
    assert (await gateway.http.post("/v1/events", json=EVENT)).status_code == 202


def answered(route: str, method: str, status: str) -> float:
    labels = {"route": route, "method": method, "status": status}
    return REGISTRY.get_sample_value("recofleet_gateway_requests_total", labels) or 0.0


async def test_every_answer_is_counted_by_route_and_status(gateway: Gateway):
    before = {s: answered("/v1/events", "POST", s) for s in ("202", "500")}
    unmatched = answered("unmatched", "GET", "404")

    assert (await gateway.http.post("/v1/events", json=EVENT)).status_code == 202
    gateway.ingestion.error = RuntimeError("a bug")
    assert (await gateway.http.post("/v1/events", json=EVENT)).status_code == 500
    assert (await gateway.http.get("/v1/no-such-thing")).status_code == 404

    assert answered("/v1/events", "POST", "202") == before["202"] + 1
    assert answered("/v1/events", "POST", "500") == before["500"] + 1
    assert answered("unmatched", "GET", "404") == unmatched + 1


async def test_nothing_accepted_is_422_with_the_summary_and_a_detail(gateway: Gateway):
    gateway.ingestion.reject = True
    events = await gateway.http.post("/v1/events", json={"events": [{}]})
    assert_error(events, 422, "no event accepted")
    assert events.json()["rejected"] == [{"index": 0, "id": "", "reason": "event: no type"}]
    assert events.json()["accepted"] == 0 and events.json()["event_ids"] == []
    items = await gateway.http.put("/v1/items", json={"items": [{}]})
    assert_error(items, 422, "no item accepted")


async def test_a_segment_batch_of_nothing_usable_is_200_not_successful_as_on_segment(
    gateway: Gateway,
):
    gateway.ingestion.reject = True
    segment = await gateway.http.post(
        "/segment/v1/batch", json={"batch": [{}]}, headers=basic(WRITE_KEY)
    )
    assert segment.status_code == 200, segment.text
    assert segment.json()["success"] is False
    assert "no event accepted" in segment.json()["detail"]
    assert segment.json()["rejected"] == [{"index": 0, "id": "", "reason": "event: no type"}]


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({"authorization": "Basic " + base64.b64encode(b"wrong:").decode()}, b"{}", 401),
        ({"content-type": "application/x-www-form-urlencoded"}, b"a=1", 415),
        (None, b"x" * 5000, 413),
    ],
)
async def test_segment_refusals_carry_code_and_message_as_segments_libraries_read_them(
    gateway: Gateway, headers: dict[str, str] | None, body: bytes, status: int
):
    sent = basic(WRITE_KEY) | (headers or {})
    reply = await gateway.http.post("/segment/v1/batch", content=body, headers=sent)
    assert reply.status_code == status, reply.text
    answer = reply.json()
    assert answer["message"] == answer["detail"] and answer["detail"]
    codes = {401: "unauthorized", 415: "unsupported_media_type", 413: "request_entity_too_large"}
    assert answer["code"] == codes[status]


async def test_accepted_bodies_have_the_documented_fields(gateway: Gateway):
    events = await gateway.http.post("/v1/events", json=EVENT)
    assert events.status_code == 202
    assert events.json() == {"accepted": 1, "event_ids": ["e-1"], "rejected": [], "ignored": 1}
    segment = await gateway.http.post(
        "/segment/v1/batch", json={"batch": []}, headers=basic(WRITE_KEY)
    )
    assert segment.status_code == 200
    assert segment.json() == {
        "success": True,
        "accepted": 1,
        "event_ids": ["e-1"],
        "rejected": [],
        "ignored": 1,
    }
    items = await gateway.http.put("/v1/items", json={"item_id": "85123A"})
    assert items.json() == {"accepted": 1, "item_ids": ["85123A"], "rejected": []}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"", 400, "empty body"),
        (b"{not json", 400, None),
        (b"x" * 5000, 413, "exceeds the limit of 4096 bytes"),
    ],
)
async def test_bodies_refused_before_ingestion(
    gateway: Gateway, body: bytes, status: int, fragment: str | None
):
    gateway.ingestion.error = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "body is not valid JSON")
    reply = await gateway.http.post("/v1/events", content=body)
    assert_error(reply, status, *([fragment] if fragment else []))


async def test_a_streamed_body_past_the_limit_is_413(gateway: Gateway):
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    reply = await gateway.http.post("/v1/events", content=chunks())
    assert_error(reply, 413, "exceeds the limit")
    assert gateway.ingestion.payloads == []


async def test_unknown_paths_and_methods_answer_json(gateway: Gateway):
    assert_error(await gateway.http.get("/v2/nothing"), 404)
    assert_error(await gateway.http.get("/v1/events"), 405)
    bad_format = await gateway.http.post("/v1/events?format=csv", json=EVENT)
    assert_error(bad_format, 422, "format: Input should be 'native'")


# --- Segment: credentials before any parse -----------------------------------------------

DEEP = b"[" * 1000


@pytest.mark.parametrize("path", ["/segment/v1/batch", "/segment/v1/track"])
async def test_segment_refuses_a_wrong_basic_auth_key_before_reading_the_body(
    gateway: Gateway, path: str
):
    for headers in (basic("wrong-key"), {"authorization": "Basic !!not-base64!!"}):
        reply = await gateway.http.post(path, content=DEEP, headers=headers)
        assert_error(reply, 401, "write key")
        assert reply.headers["www-authenticate"].startswith("Basic")
    assert gateway.ingestion.payloads == []


@pytest.mark.parametrize("path", ["/segment/v1/batch", "/segment/v1/track"])
@pytest.mark.parametrize(
    "body",
    [
        DEEP,
        b'{"batch": [], "writeKey": "wrong-key"}',
        b'{"batch": []}',
        b"not json at all",
    ],
)
async def test_segment_without_basic_auth_refuses_a_body_without_the_key_unparsed(
    gateway: Gateway, path: str, body: bytes
):
    reply = await gateway.http.post(path, content=body, headers={"authorization": "Bearer x"})
    assert_error(reply, 401, "write key")
    assert gateway.ingestion.payloads == []


@pytest.mark.parametrize("path", ["/segment/v1/batch", "/segment/v1/track"])
@pytest.mark.parametrize(
    "body",
    [
        # The key is there, but not as the writeKey of one JSON object.
        json.dumps({"batch": [], "userId": WRITE_KEY}).encode(),
        json.dumps([{"writeKey": WRITE_KEY}]).encode(),
        json.dumps({"writeKey": f"{WRITE_KEY}-longer"}).encode(),
    ],
)
async def test_segment_body_key_must_be_the_write_key_field(
    gateway: Gateway, path: str, body: bytes
):
    assert_error(await gateway.http.post(path, content=body), 401, "write key")
    assert gateway.ingestion.payloads == []


@pytest.mark.parametrize("path", ["/segment/v1/batch", "/segment/v1/track"])
async def test_segment_body_with_the_key_but_not_json_is_400(gateway: Gateway, path: str):
    body = b'{"writeKey": "' + WRITE_KEY.encode() + b'", "batch": ' + DEEP
    assert_error(await gateway.http.post(path, content=body), 400, "body")
    nested = b'{"writeKey": "' + WRITE_KEY.encode() + b'", "x": ' + b"[" * 300 + b"]" * 300 + b"}"
    assert_error(await gateway.http.post(path, content=nested), 400, "deeper than")
    assert gateway.ingestion.payloads == []


async def test_segment_body_write_key_is_accepted_without_basic_auth(gateway: Gateway):
    body = {"batch": [{"type": "track", "event": "Product Viewed"}], "writeKey": WRITE_KEY}
    reply = await gateway.http.post("/segment/v1/batch", json=body)
    assert reply.status_code == 200, reply.text
    assert json.loads(gateway.ingestion.payloads[0]) == body


async def test_segment_single_calls_get_their_type_and_are_reencoded(gateway: Gateway):
    reply = await gateway.http.post(
        "/segment/v1/identify",
        json={"userId": "m-1", "traits": {"a": "é"}},
        headers=basic(WRITE_KEY),
    )
    assert reply.status_code == 200, reply.text
    assert json.loads(gateway.ingestion.payloads[0]) == {
        "userId": "m-1",
        "traits": {"a": "é"},
        "type": "identify",
    }
    deep = await gateway.http.post("/segment/v1/track", content=DEEP, headers=basic(WRITE_KEY))
    assert_error(deep, 400, "body")
    array = await gateway.http.post("/segment/v1/track", json=[1], headers=basic(WRITE_KEY))
    assert_error(array, 400, "one JSON object")
    assert len(gateway.ingestion.payloads) == 1


async def test_segment_batch_with_basic_auth_goes_to_ingestion_as_sent(gateway: Gateway):
    gateway.ingestion.error = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "body is not valid JSON")
    reply = await gateway.http.post("/segment/v1/batch", content=DEEP, headers=basic(WRITE_KEY))
    assert_error(reply, 400, "not valid JSON")
    assert gateway.ingestion.payloads == [DEEP]


@pytest.mark.parametrize("path", ["/segment/v1/batch", "/segment/v1/track"])
async def test_segment_endpoints_off_answer_404_whatever_is_sent(path: str):
    off = Gateway(settings(segment_write_key=None))
    async with off.http:
        for headers in ({}, basic("any")):
            reply = await off.http.post(path, content=DEEP, headers=headers)
            assert_error(reply, 404, "RECOFLEET_SEGMENT_WRITE_KEY")
    assert off.ingestion.payloads == []


# --- over a real socket: a 500 must not cost the client its keep-alive connection --------


@contextlib.contextmanager
def serving(app: Any) -> Iterator[int]:
    """The app under uvicorn on a free loopback port, in a thread (no lifespan: state is set)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_an_unhandled_error_keeps_the_connection_for_the_next_request():
    gateway_settings = settings(max_body_bytes=5_000_000)
    clients = FakeClients()
    clients.ingestion.error = RuntimeError("a bug")
    with serving(app_with(gateway_settings, clients)) as port:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "POST",
            "/v1/events",
            body=json.dumps(EVENT),
            headers={"content-type": "application/json", "x-api-key": ADMIN_KEY},
        )
        failed = conn.getresponse()
        assert (failed.status, json.loads(failed.read())) == (
            500,
            {"detail": "internal error: the gateway logged it"},
        )
        clients.ingestion.error = None
        batch = json.dumps({"events": [EVENT] * 2000}).encode()
        conn.request("POST", "/v1/events", body=batch, headers={"x-api-key": ADMIN_KEY})
        ok = conn.getresponse()
        assert ok.status == 202, ok.read()
        ok.read()
        conn.close()


def test_a_body_that_stops_arriving_is_refused_with_408_and_the_server_goes_on():
    gateway_settings = settings(body_idle_timeout_s=0.5)
    clients = FakeClients()
    with serving(app_with(gateway_settings, clients)) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(
                b"POST /v1/events HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
                + f"x-api-key: {ADMIN_KEY}\r\ncontent-length: 1000\r\n\r\n".encode()
                + b'{"type": '
            )
            started = time.monotonic()
            answer = stalled.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "the body stopped arriving" in answer
        assert time.monotonic() - started < 5
        assert clients.ingestion.payloads == []
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/events", body=json.dumps(EVENT), headers={"x-api-key": ADMIN_KEY})
        assert conn.getresponse().status == 202
        conn.close()


async def test_a_gzip_body_is_read_expanded(gateway: Gateway):
    reply = await gateway.http.post(
        "/v1/events",
        content=gzip.compress(json.dumps(EVENT).encode()),
        headers={"content-encoding": "gzip", "content-type": "application/json"},
    )
    assert reply.status_code == 202, reply.text
    assert json.loads(gateway.ingestion.payloads[0]) == EVENT


async def test_a_gzip_bomb_is_refused_with_413_unexpanded(gateway: Gateway):
    bomb = gzip.compress(b" " * 3_000_000)  # 3 KB, within the limit, that expand to 3 MB
    assert len(bomb) < 4096
    headers = {"content-encoding": "gzip"}
    reply = await gateway.http.post("/v1/events", content=bomb, headers=headers)
    assert_error(reply, 413, "once expanded")
    assert gateway.ingestion.payloads == []


@pytest.mark.parametrize(
    ("encoding", "body", "status", "fragment"),
    [
        ("br", b"\x0b\x02\x80", 415, "content encoding 'br' is not accepted"),
        ("gzip", b"not gzip at all", 400, "not valid gzip"),
        ("gzip", gzip.compress(json.dumps(EVENT).encode())[:-12], 400, "not valid gzip"),
    ],
)
async def test_other_encodings_and_broken_gzip_are_refused(
    gateway: Gateway, encoding: str, body: bytes, status: int, fragment: str
):
    headers = {"content-encoding": encoding}
    reply = await gateway.http.post("/v1/events", content=body, headers=headers)
    assert_error(reply, status, fragment)
    assert gateway.ingestion.payloads == []


# --- GA4's Measurement Protocol ----------------------------------------------------------

GA4_BODY = {
    "client_id": "1234.5678",
    "user_id": "m-1",
    "events": [{"name": "view_item", "params": {"items": [{"item_id": "85123A"}]}}],
}


async def test_ga4_collect_takes_an_access_key_as_api_secret_and_answers_204(
    gateway: Gateway,
) -> None:
    _, key = create_key(gateway.keys, ["events:write"])
    body = json.dumps(GA4_BODY).encode()

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
    ) as sender:  # no header: the key rides in the URL, as Google's endpoint has it
        reply = await sender.post(
            "/mp/collect", params={"measurement_id": "G-TEST", "api_secret": key}, content=body
        )

    assert reply.status_code == 204, reply.text
    assert reply.content == b""
    assert gateway.ingestion.payloads == [body]
    assert gateway.ingestion.formats == ["ga4"]


@pytest.mark.parametrize(
    ("secret", "status", "fragment"),
    [
        (None, 401, "api_secret"),
        ("rf_not-a-key", 401, "not valid"),
        ("reader", 403, "events:write"),
    ],
)
async def test_ga4_collect_without_a_key_that_may_write_events_takes_nothing(
    gateway: Gateway, secret: str | None, status: int, fragment: str
) -> None:
    if secret == "reader":
        secret = create_key(gateway.keys, ["profiles:read"])[1]
    params = {"measurement_id": "G-TEST"} | ({"api_secret": secret} if secret else {})

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
    ) as sender:
        reply = await sender.post("/mp/collect", params=params, json=GA4_BODY)

    assert_error(reply, status, fragment)
    assert gateway.ingestion.payloads == []


async def test_ga4_collect_whose_events_were_all_refused_says_why(gateway: Gateway) -> None:
    gateway.ingestion.reject = True

    reply = await gateway.http.post("/mp/collect", json=GA4_BODY)

    assert_error(reply, 422, "no event accepted")
    assert reply.json()["rejected"] == [{"index": 0, "id": "", "reason": "event: no type"}]
