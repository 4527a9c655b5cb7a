"""Every refusal is a JSON `{"detail": str}` and keeps the keep-alive connection usable.

Each case sends one bad request, then a large valid batch on the same HTTP/1.1 connection
(`http.client`, which never reconnects on its own): a refusal that left unread body bytes
behind, or an error the server answered by dropping the connection, fails the second one.
Requests carry an access key of this module's (a rate-limit bucket of its own) unless the
case says which other key, or none.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import SEGMENT_WRITE_KEY, RunningFleet

pytestmark = pytest.mark.integration

AUTH = {"authorization": "Basic " + base64.b64encode(f"{SEGMENT_WRITE_KEY}:".encode()).decode()}
JSON = {"content-type": "application/json"}
TOO_LARGE = 6_000_000  # the gateway's default limit is 5,000,000 bytes


@dataclass
class Case:
    method: str
    path: str
    status: int
    body: bytes | Callable[[], Iterator[bytes]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fragment: str = ""
    key: Literal["own", "none", "profiles:read"] = "own"


def chunks(total: int, size: int = 65536) -> Callable[[], Iterator[bytes]]:
    def produce() -> Iterator[bytes]:
        yield b"{"
        for _ in range(total // size):
            yield b" " * size
        yield b"}"

    return produce


CASES = {
    "400 not JSON": Case("POST", "/v1/events", 400, b"{not json", JSON),
    "400 Segment batch nested 1000 deep": Case(
        "POST", "/segment/v1/batch", 400, b"[" * 1000, {**JSON, **AUTH}
    ),
    "400 empty body": Case("POST", "/v1/events", 400, b"", JSON, "empty body"),
    "401 Segment without a key": Case(
        "POST", "/segment/v1/batch", 401, b'{"batch": []}', JSON, "write key"
    ),
    "401 Segment without a key, nested 1000 deep": Case(
        "POST", "/segment/v1/batch", 401, b"[" * 1000, JSON, "write key"
    ),
    "401 Segment with a wrong key": Case(
        "POST",
        "/segment/v1/track",
        401,
        b"{}",
        {**JSON, "authorization": "Basic " + base64.b64encode(b"wrong:").decode()},
    ),
    "413 declared length": Case(
        "POST", "/v1/events", 413, b"{" + b" " * TOO_LARGE + b"}", JSON, "exceeds the limit"
    ),
    "413 chunked": Case("POST", "/v1/events", 413, chunks(TOO_LARGE), JSON, "exceeds the limit"),
    "413 Segment chunked": Case(
        "POST", "/segment/v1/batch", 413, chunks(TOO_LARGE), {**JSON, **AUTH}, "exceeds the limit"
    ),
    "413 too many events": Case(
        "POST",
        "/v1/events",
        413,
        json.dumps(
            {"events": [{"type": "view", "member_id": "x", "item_id": "1"}] * 1001}
        ).encode(),
        JSON,
    ),
    "415 form-encoded (plain curl -d)": Case(
        "POST",
        "/v1/events",
        415,
        b'{"type": "view"}',
        {"content-type": "application/x-www-form-urlencoded"},
        "content-type: application/json",
    ),
    "415 Segment multipart": Case(
        "POST",
        "/segment/v1/batch",
        415,
        b"--x\r\n\r\n{}\r\n--x--\r\n",
        {"content-type": "multipart/form-data; boundary=x", **AUTH},
    ),
    "415 charset": Case(
        "POST", "/v1/events", 415, b"{}", {"content-type": "text/plain; charset=latin-1"}
    ),
    "422 nothing accepted": Case(
        "POST", "/v1/events", 422, b'{"events": [{"type": "teleport"}]}', JSON, "no event accepted"
    ),
    "422 invalid parameter": Case(
        "POST", "/v1/events?format=csv", 422, b'{"type": "view"}', JSON, "format"
    ),
    "401 no access key, a large body unread": Case(
        "POST", "/v1/events", 401, b"[" + b" " * 1_000_000 + b"]", JSON, "access key", "none"
    ),
    "401 no access key, chunked": Case(
        "POST", "/v1/events", 401, chunks(1_000_000), JSON, "access key", "none"
    ),
    "401 unknown access key": Case(
        "GET",
        "/v1/members/17850/profile",
        401,
        headers={"x-api-key": "rf_0123456789ab_" + "x" * 43},
        fragment="not valid",
        key="none",
    ),
    "403 a key without the scope": Case(
        "POST", "/v1/events", 403, b'{"type": "view"}', JSON, "events:write", "profiles:read"
    ),
    "404 unknown path": Case("GET", "/v2/nothing", 404),
    "404 unknown path with a body": Case("POST", "/v2/nothing", 404, b"[" * 100_000, JSON),
    "405 wrong method": Case("GET", "/v1/events", 405),
    "405 wrong method with a body": Case("POST", "/healthz", 405, b"{}" * 50_000, JSON),
}


def connect(fleet: RunningFleet) -> http.client.HTTPConnection:
    url = urlsplit(fleet.url)
    return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)


def exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | Callable[[], Iterator[bytes]] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    if callable(body):
        conn.request(method, path, body=body(), headers=headers or {}, encode_chunked=True)
    else:
        conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response, response.read()


def assert_json_error(response: http.client.HTTPResponse, payload: bytes, fragment: str) -> None:
    assert response.getheader("content-type", "").startswith("application/json"), payload[:200]
    body = json.loads(payload)
    assert isinstance(body, dict) and isinstance(body.get("detail"), str), body
    assert fragment in body["detail"], body
    assert response.getheader("connection", "").lower() != "close"


@pytest.fixture(scope="module")
def keys(fleet: RunningFleet) -> dict[str, dict[str, str]]:
    """The key header of each kind of case."""
    return {
        "own": {"x-api-key": fleet.new_key("admin", name="http contract")},
        "profiles:read": {"x-api-key": fleet.new_key("profiles:read", name="http contract")},
        "none": {},
    }


def assert_a_large_batch_is_accepted(conn: http.client.HTTPConnection, key: dict[str, str]) -> None:
    member_id = f"contract-{uuid.uuid4()}"
    events = [
        {"type": "view", "member_id": member_id, "item_id": f"item-{n}", "context": {"n": n}}
        for n in range(300)
    ]
    response, payload = exchange(
        conn, "POST", "/v1/events", json.dumps({"events": events}).encode(), {**JSON, **key}
    )
    assert response.status == 202, payload[:500]
    assert json.loads(payload)["accepted"] == 300


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_an_error_answers_json_and_the_connection_takes_the_next_request(
    fleet: RunningFleet, keys: dict[str, dict[str, str]], case: Case
):
    conn = connect(fleet)
    try:
        headers = {**keys[case.key], **case.headers}
        response, payload = exchange(conn, case.method, case.path, case.body, headers)
        assert response.status == case.status, payload[:500]
        assert_json_error(response, payload, case.fragment)
        if case.status in (401, 403):
            scheme = "Basic" if case.path.startswith("/segment/") else "Bearer"
            assert response.getheader("www-authenticate", "").startswith(scheme)
        assert_a_large_batch_is_accepted(conn, keys["own"])
    finally:
        conn.close()


def test_429_answers_json_and_the_connection_takes_the_next_request(
    fleet: RunningFleet, keys: dict[str, dict[str, str]]
):
    """The write key's bucket (burst 50 in the test fleet) runs dry; the address's does not."""
    conn = connect(fleet)
    try:
        for _ in range(200):
            response, payload = exchange(
                conn, "POST", "/segment/v1/batch", b'{"batch": []}', {**JSON, **AUTH}
            )
            if response.status == 429:
                break
            assert response.status == 200, payload[:500]
        assert response.status == 429
        assert_json_error(response, payload, "retry")
        assert int(response.getheader("retry-after", "0")) >= 1
        assert_a_large_batch_is_accepted(conn, keys["own"])
    finally:
        conn.close()
        # Give the write key's bucket a few tokens back for the tests that follow.
        time.sleep(3)
