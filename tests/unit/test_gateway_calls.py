"""A service's refusals as HTTP statuses (services/gateway/calls.py): a bug behind the
gateway is a 500 that says so, an outage or an overload a 503 to retry."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest
from fastapi import HTTPException

from services.gateway.calls import call
from tests.unit.test_gateway_http import ADMIN_KEY, app_with, rpc_error, settings

BUGS = [grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS]
TRANSIENT = [
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
]


class Refusing:
    """A stub method that answers every call with one status code."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    async def __call__(self, request: Any, timeout: float) -> Any:
        raise rpc_error(self.code, "Exception calling application: boom")


async def _refusal(code: grpc.StatusCode, statuses: dict[grpc.StatusCode, int]) -> HTTPException:
    with pytest.raises(HTTPException) as refused:
        await call(Refusing(code), object(), timeout=1.0, statuses=statuses, service="campaigns")
    return refused.value


@pytest.mark.parametrize("code", BUGS)
async def test_a_bug_behind_the_gateway_is_a_500_that_does_not_ask_for_a_retry(
    code: grpc.StatusCode,
) -> None:
    refused = await _refusal(code, {grpc.StatusCode.INVALID_ARGUMENT: 422})

    assert refused.status_code == 500
    assert "server error" in refused.detail and code.name in refused.detail
    assert "retry" not in refused.detail and "boom" not in refused.detail
    assert not refused.headers


@pytest.mark.parametrize("code", TRANSIENT)
async def test_an_outage_or_an_overload_is_a_503_to_retry(code: grpc.StatusCode) -> None:
    refused = await _refusal(code, {})

    assert refused.status_code == 503
    assert refused.detail == f"campaigns unavailable ({code.name}); retry"
    assert refused.headers == {"Retry-After": "1"}


async def test_a_listed_code_keeps_its_status_and_the_services_message() -> None:
    full = await _refusal(
        grpc.StatusCode.RESOURCE_EXHAUSTED, {grpc.StatusCode.RESOURCE_EXHAUSTED: 409}
    )

    assert (full.status_code, full.detail) == (409, "Exception calling application: boom")


class Merchandising:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.GetRule = Refusing(code)


class Clients:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.merchandising = Merchandising(code)


@pytest.mark.parametrize(
    ("code", "status", "retry_after"),
    [(grpc.StatusCode.UNKNOWN, 500, None), (grpc.StatusCode.UNAVAILABLE, 503, "1")],
)
async def test_over_http_a_bug_is_a_500_and_an_outage_a_503_with_retry_after(
    code: grpc.StatusCode, status: int, retry_after: str | None
) -> None:
    app = app_with(settings(), Clients(code))  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"x-api-key": ADMIN_KEY},
    ) as http:
        reply = await http.get("/v1/rules/home-hero")

    assert reply.status_code == status, reply.text
    assert reply.headers.get("retry-after") == retry_after
    assert ("retry" in reply.json()["detail"]) is (status == 503)
    assert ("server error" in reply.json()["detail"]) is (status == 500)
