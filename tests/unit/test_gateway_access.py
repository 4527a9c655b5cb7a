"""Access keys at the gateway's edge: 401 without a valid key, 403 without the scope, the
route's answer with it; both headers; revocation within a second; open paths stay open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from services.gateway.access_keys import create_key, revoke_key
from services.gateway.app import _check_keys
from tests.unit.test_gateway_http import (
    DEEP,
    EVENT,
    WRITE_KEY,
    Gateway,
    basic,
    memory_key_store,
    settings,
)

# Each route that needs a key, a request it answers 2xx with the fakes, and its scope.
ROUTES = {
    "events:write": [
        ("POST", "/v1/events", EVENT),
        ("PUT", "/v1/items", {"item_id": "85123A"}),
    ],
    "recommendations:read": [
        ("GET", "/v1/members/m-1/recommendations", None),
        ("GET", "/v1/items/85123A/similar", None),
        ("GET", "/v1/members/m-1/offers", None),
    ],
    "profiles:read": [("GET", "/v1/members/m-1/profile", None)],
}
EVERY_ROUTE = [(scope, *route) for scope, routes in ROUTES.items() for route in routes]


class FakeComposer:
    """Answers what the routes ask as a composer with nothing behind it would."""

    async def recommend(self, *args: object) -> object:
        raise _Answered

    async def similar(self, *args: object) -> object:
        raise _Answered

    async def profile(self, *args: object) -> object:
        raise _Answered


class FakeCampaigns:
    """Answers offers as campaigns with nothing behind it would."""

    async def GetOffers(self, *args: object, **kwargs: object) -> object:
        raise _Answered


class _Answered(Exception):
    """The route body ran: past the key check. Turned into a 299 by the test app."""


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    running = Gateway(settings())
    running.app.state.composer = FakeComposer()
    running.app.state.clients.campaigns = FakeCampaigns()

    async def answered(request: object, exc: Exception) -> JSONResponse:
        return JSONResponse({"route": "ran"}, status_code=299)

    running.app.add_exception_handler(_Answered, answered)
    async with running.http:
        yield running


async def call(
    gateway: Gateway, method: str, path: str, body: object, headers: dict[str, str]
) -> httpx.Response:
    # Without the client's default key: each test says which key it sends, if any.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
    ) as http:
        return await http.request(method, path, json=body, headers=headers)


def ran(reply: httpx.Response) -> bool:
    """The route answered (2xx from the fakes), so the key was let through."""
    return reply.status_code in (200, 202, 299)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize(("scope", "method", "path", "body"), EVERY_ROUTE)
async def test_no_key_is_401_with_a_bearer_challenge(
    gateway: Gateway, scope: str, method: str, path: str, body: object
):
    reply = await call(gateway, method, path, body, {})
    assert reply.status_code == 401, reply.text
    assert (
        "Authorization: Bearer" in reply.json()["detail"] and "X-API-Key" in reply.json()["detail"]
    )
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert gateway.ingestion.payloads == []


@pytest.mark.parametrize(("scope", "method", "path", "body"), EVERY_ROUTE)
async def test_a_key_with_the_scope_passes_and_others_are_403(
    gateway: Gateway, scope: str, method: str, path: str, body: object
):
    _, right = create_key(gateway.keys, [scope])
    others = [s for s in ROUTES if s != scope]
    _, wrong = create_key(gateway.keys, [*others, "segments:write"])
    for headers in (bearer(right), {"x-api-key": right}):
        assert ran(await call(gateway, method, path, body, headers))
    refused = await call(gateway, method, path, body, bearer(wrong))
    assert refused.status_code == 403, refused.text
    assert f"lacks the scope '{scope}'" in refused.json()["detail"]
    assert f'scope="{scope}"' in refused.headers["www-authenticate"]
    assert "insufficient_scope" in refused.headers["www-authenticate"]


@pytest.mark.parametrize(("scope", "method", "path", "body"), EVERY_ROUTE)
async def test_an_admin_key_passes_everywhere(
    gateway: Gateway, scope: str, method: str, path: str, body: object
):
    _, admin = create_key(gateway.keys, ["admin"])
    assert ran(await call(gateway, method, path, body, bearer(admin)))


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer rf_0123456789ab_" + "x" * 43},
        {"authorization": "Bearer "},
        {"x-api-key": "not-a-key"},
        basic(WRITE_KEY),  # Segment's write key is no access key
        {"authorization": "Token whatever"},
    ],
)
async def test_unknown_keys_and_other_schemes_are_401(gateway: Gateway, headers: dict[str, str]):
    reply = await call(gateway, "GET", "/v1/members/m-1/profile", None, headers)
    assert reply.status_code == 401, reply.text
    assert reply.headers["www-authenticate"].startswith("Bearer")


async def test_the_bearer_key_is_the_one_checked_when_both_headers_come(gateway: Gateway):
    _, reader = create_key(gateway.keys, ["profiles:read"])
    both = {**bearer(reader), "x-api-key": "made-up"}
    assert ran(await call(gateway, "GET", "/v1/members/m-1/profile", None, both))
    swapped = {**bearer("made-up"), "x-api-key": reader}
    assert (await call(gateway, "GET", "/v1/members/m-1/profile", None, swapped)).status_code == 401


async def test_the_key_is_checked_before_parameters_and_body(gateway: Gateway):
    reply = await call(gateway, "GET", "/v1/members/m-1/recommendations?limit=0", None, {})
    assert reply.status_code == 401
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=gateway.app), base_url="http://gateway"
    ) as http:
        deep = await http.post("/v1/events?format=csv", content=DEEP)
    assert deep.status_code == 401
    assert gateway.ingestion.payloads == []


async def test_a_revoked_key_is_refused_within_a_second(gateway: Gateway):
    made, key = create_key(gateway.keys, ["profiles:read"])
    assert ran(await call(gateway, "GET", "/v1/members/m-1/profile", None, bearer(key)))
    revoke_key(gateway.keys, made.id)
    revoked_at = time.monotonic()
    while True:
        reply = await call(gateway, "GET", "/v1/members/m-1/profile", None, bearer(key))
        if reply.status_code == 401:
            break
        assert time.monotonic() - revoked_at < 1.0, "a revoked key still passes after 1 s"
        await asyncio.sleep(0.02)
    assert "revoked" in reply.json()["detail"]


async def test_an_unreachable_key_store_is_503_to_retry(gateway: Gateway):
    def broken(key_id: str) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    gateway.keys.get = broken  # type: ignore[method-assign]
    reply = await call(gateway, "GET", "/v1/members/m-1/profile", None, bearer("rf_x"))
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert "retry" in reply.json()["detail"]


async def test_operations_paths_and_the_document_need_no_key(gateway: Gateway):
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
        assert (await call(gateway, "GET", path, None, {})).status_code == 200, path


async def test_the_segment_endpoints_keep_their_write_key(gateway: Gateway):
    segment = await call(gateway, "POST", "/segment/v1/batch", {"batch": []}, basic(WRITE_KEY))
    assert segment.status_code == 200, segment.text
    _, admin = create_key(gateway.keys, ["admin"])
    # An access key is no write key.
    wrong = await call(gateway, "POST", "/segment/v1/batch", {"batch": []}, bearer(admin))
    assert wrong.status_code == 401 and "write key" in wrong.json()["detail"]


def test_a_gateway_starting_seeds_the_admin_key_or_says_none_can_pass(caplog):
    empty = memory_key_store()
    _check_keys(empty, settings())
    assert "no active access key" in caplog.text and empty.all() == []
    caplog.clear()
    seeded = memory_key_store()
    _check_keys(seeded, settings(admin_key="gateway-start-admin-key-0123456789abcdef"))
    assert [key.id for key in seeded.all()] == ["env"] and "no active" not in caplog.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/members/a%00b/recommendations",
        "/v1/members/a%0Ab/offers",
        "/v1/members/a%1Fb/profile",
    ],
)
async def test_a_member_id_with_a_control_character_is_422_on_every_member_route(
    gateway: Gateway, path: str
):
    _, admin = create_key(gateway.keys, ["admin"])
    reply = await call(gateway, "GET", path, None, bearer(admin))
    assert reply.status_code == 422, reply.text
    assert "member_id must not contain control characters" in reply.json()["detail"]
