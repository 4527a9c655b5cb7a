"""Whom a rate limit counts: a verified write key or access key, else the client's address;
never something the client picks."""

from __future__ import annotations

import pytest
import uvicorn
from pydantic import ValidationError
from starlette.requests import Request
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from services.common.settings import FleetSettings
from services.gateway.access_keys import create_key
from services.gateway.routers.events import client_key
from services.gateway.server import server_options
from services.gateway.settings import GatewaySettings
from tests.unit.test_gateway_http import WRITE_KEY, Gateway, basic, settings


def request(
    headers: dict[str, str], client: tuple[str, int] | None = ("10.1.2.3", 4000)
) -> Request:
    return Request(
        {
            "type": "http",
            "method": "POST",
            "path": "/v1/events",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": client,
        }
    )


def test_the_key_is_the_address_whatever_api_key_is_sent():
    assert client_key(request({})) == "ip:10.1.2.3"
    assert client_key(request({"x-api-key": "fresh-1"})) == "ip:10.1.2.3"
    assert client_key(request({"x-api-key": "fresh-2"})) == "ip:10.1.2.3"
    # Forwarding headers are uvicorn's to believe or not (trusted proxies), never the app's.
    assert client_key(request({"x-forwarded-for": "1.1.1.1"})) == "ip:10.1.2.3"
    assert client_key(request({}, client=None)) == "ip:unknown"


def test_a_verified_write_key_has_its_bucket_without_the_key_in_it():
    key = client_key(request({}), WRITE_KEY)
    assert key.startswith("write-key:") and WRITE_KEY not in key
    assert key == client_key(request({}, client=("10.9.9.9", 1)), WRITE_KEY)
    assert key != client_key(request({}), "another-key")


def test_a_verified_access_key_has_its_bucket_by_its_public_id():
    class Verified:
        id = "0123456789ab"

    verified = request({})
    verified.state.access_key = Verified()
    assert client_key(verified) == "access-key:0123456789ab"
    # The Segment endpoints count their write key, whatever else the request carries.
    assert client_key(verified, WRITE_KEY).startswith("write-key:")


async def test_each_access_key_has_one_bucket_and_made_up_keys_choose_none():
    gateway = Gateway(settings(rate_limit_per_s=0.001, rate_limit_burst=2))
    event = {"type": "view", "member_id": "m-1", "item_id": "85123A"}
    _, other = create_key(gateway.keys, ["events:write"], "another caller")
    async with gateway.http:
        # Keys the gateway does not know are refused before they could pick a bucket.
        made_up = [
            await gateway.http.post("/v1/events", json=event, headers={"x-api-key": f"k-{i}"})
            for i in range(5)
        ]
        assert {r.status_code for r in made_up} == {401}
        statuses = [(await gateway.http.post("/v1/events", json=event)) for _ in range(3)]
        assert [r.status_code for r in statuses] == [202, 202, 429]
        assert int(statuses[-1].headers["retry-after"]) >= 1
        assert "retry" in statuses[-1].json()["detail"]
        # Another key is another caller, with a bucket of its own.
        headers = {"authorization": f"Bearer {other}"}
        assert (
            await gateway.http.post("/v1/events", json=event, headers=headers)
        ).status_code == 202
        # A verified Segment write key is counted on its own.
        segment = await gateway.http.post(
            "/segment/v1/batch", json={"batch": []}, headers=basic(WRITE_KEY)
        )
        assert segment.status_code == 200
        # An unverified one is refused before it could choose a bucket.
        wrong = await gateway.http.post(
            "/segment/v1/batch", json={"batch": []}, headers=basic("k-new")
        )
        assert wrong.status_code == 401


def test_no_proxy_is_trusted_by_default():
    options = server_options(FleetSettings(), GatewaySettings())
    assert options["proxy_headers"] is False
    config = uvicorn.Config(lambda scope, receive, send: None, **options)
    config.load()
    assert not isinstance(config.loaded_app, ProxyHeadersMiddleware)


async def test_trusted_proxies_are_passed_to_uvicorn_and_only_they_are_believed():
    gateway_settings = GatewaySettings(trusted_proxies="10.0.0.0/8, 192.168.1.7")
    options = server_options(FleetSettings(), gateway_settings)
    assert options["proxy_headers"] is True
    assert options["forwarded_allow_ips"] == ["10.0.0.0/8", "192.168.1.7"]
    seen: list[str] = []

    async def app(scope, receive, send) -> None:
        seen.append(client_key(Request(scope)))

    middleware = ProxyHeadersMiddleware(app, trusted_hosts=options["forwarded_allow_ips"])
    for peer in ("10.4.5.6", "127.0.0.1"):
        scope = {
            "type": "http",
            "headers": [(b"x-forwarded-for", b"203.0.113.9")],
            "client": (peer, 1),
        }
        await middleware(scope, None, None)
    assert seen == ["ip:203.0.113.9", "ip:127.0.0.1"]


@pytest.mark.parametrize("value", ["localhost", "10.0.0.0/33", "10.0.0.1, nope"])
def test_trusted_proxies_must_be_addresses_networks_or_star(value: str):
    with pytest.raises(ValidationError, match="not an IP address"):
        GatewaySettings(trusted_proxies=value)
    assert GatewaySettings(trusted_proxies="*").trusted_proxy_list == ["*"]
