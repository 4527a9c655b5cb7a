"""Merchandising rules and catalog items through the gateway, over a real merchandising
service (its servicer on an in-process gRPC server, its store a SQLite file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import grpc
import httpx
import pytest

from services.campaigns.merch_servicer import MerchandisingServicer
from services.campaigns.merchandising import MerchandisingSettings, Rule
from services.campaigns.store import SqlCatalogStore
from services.common.clock import Clock
from services.common.events import CatalogItem
from services.gateway.access_keys import SqlAccessKeyStore, create_key
from services.gateway.merch_schemas import RuleIn
from services.gen.recofleet.campaigns.v1 import campaigns_pb2_grpc
from tests.unit.test_gateway_http import ADMIN_KEY, app_with, memory_key_store, settings

AT = datetime(2026, 12, 1, 12, tzinfo=UTC)
PIN = {"placement": "home", "action": "pin", "item_id": "rake", "position": 1}


class Clients:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.merchandising = campaigns_pb2_grpc.MerchandisingServiceStub(channel)


class Gateway:
    def __init__(self, http: httpx.AsyncClient, store: SqlCatalogStore, keys: SqlAccessKeyStore):
        self.http, self.store, self.keys = http, store, keys

    def key(self, *scopes: str) -> dict[str, str]:
        return {"x-api-key": create_key(self.keys, scopes, "tests")[1]}


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    store = SqlCatalogStore.from_url(f"sqlite:///{tmp_path / 'campaigns.db'}")
    servicer = MerchandisingServicer(store, Clock.fixed(AT), MerchandisingSettings(max_rules=3))
    server = grpc.aio.server()
    campaigns_pb2_grpc.add_MerchandisingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    keys = memory_key_store()
    app = app_with(settings(), Clients(channel), keys)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"x-api-key": ADMIN_KEY},
    ) as http:
        yield Gateway(http, store, keys)
    await channel.close()
    await server.stop(None)
    store.close()


async def test_a_rule_is_created_read_listed_replaced_and_deleted(gateway: Gateway) -> None:
    http = gateway.http

    created = await http.post("/v1/rules", json={**PIN, "name": "home-hero"})
    assert created.status_code == 201, created.text
    rule = created.json()
    rule_id = rule["rule_id"]
    assert (rule["name"], rule["action"], rule["placement"], rule["live"]) == (
        "home-hero",
        "pin",
        "home",
        True,
    )
    assert rule["definition"]["position"] == 1 and rule["definition"]["priority"] == 0
    await http.post("/v1/rules", json={"placement": "cart", "action": "bury", "tag": "bulky"})

    assert (await http.get(f"/v1/rules/{rule_id}")).json() == rule
    listed = (await http.get("/v1/rules", params={"placement": "home"})).json()["rules"]
    assert [r["rule_id"] for r in listed] == [rule_id]
    assert len((await http.get("/v1/rules")).json()["rules"]) == 2

    moved = await http.put(f"/v1/rules/{rule_id}", json={**rule["definition"], "position": 3})
    assert moved.status_code == 200, moved.text
    assert moved.json()["definition"]["position"] == 3
    assert moved.json()["created_at"] == rule["created_at"]

    deleted = await http.delete(f"/v1/rules/{rule_id}")
    assert deleted.status_code == 204
    gone = await http.get(f"/v1/rules/{rule_id}")
    assert gone.status_code == 404 and rule_id in gone.json()["detail"]
    assert (await http.delete(f"/v1/rules/{rule_id}")).status_code == 404


async def test_put_with_a_new_id_creates_the_rule_under_it(gateway: Gateway) -> None:
    reply = await gateway.http.put("/v1/rules/home-hero", json=PIN)

    assert reply.status_code == 200, reply.text
    assert reply.json()["rule_id"] == "home-hero" and reply.json()["name"] == "home-hero"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({**PIN, "position": 0}, "position: Input should be greater than or equal to 1"),
        ({**PIN, "action": "pinn"}, "action: 'pinn' is not one of"),
        ({"placement": "home", "action": "boost"}, "category: give at least one of"),
        ({**PIN, "starts_at": "soon"}, "starts_at: "),
        ({**PIN, "ends_at": "9999-12-31T23:59:59-01:00"}, "ends_at: "),
        ({**PIN, "starts_at": "0001-01-01T00:00:00+01:00"}, "starts_at: "),
        ([PIN], "body: must be a JSON object"),
    ],
)
async def test_an_invalid_rule_is_422_naming_the_field(
    gateway: Gateway, body: object, detail: str
) -> None:
    reply = await gateway.http.post("/v1/rules", json=body)

    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"].startswith(detail)
    assert (await gateway.http.get("/v1/rules")).json()["rules"] == []


async def test_past_the_most_rules_the_store_takes_a_new_one_is_409(gateway: Gateway) -> None:
    for position in (1, 2, 3):
        created = await gateway.http.post("/v1/rules", json={**PIN, "position": position})
        assert created.status_code == 201
    rule_id = created.json()["rule_id"]

    refused = await gateway.http.post("/v1/rules", json=PIN)

    assert refused.status_code == 409
    assert "delete some first" in refused.json()["detail"]
    # Replacing one is no new rule.
    assert (await gateway.http.put(f"/v1/rules/{rule_id}", json=PIN)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/v1/rules"),
        ("get", "/v1/rules"),
        ("put", "/v1/rules/r-1"),
        ("delete", "/v1/rules/r-1"),
    ],
)
async def test_rules_need_an_admin_key(gateway: Gateway, method: str, path: str) -> None:
    body = PIN if method in ("post", "put") else None
    shop = gateway.key("recommendations:read", "events:write")

    without = await gateway.http.request(method, path, headers={"x-api-key": ""}, json=body)
    wrong = await gateway.http.request(method, path, headers=shop, json=body)

    assert without.status_code == 401
    assert wrong.status_code == 403 and "'admin'" in wrong.json()["detail"]
    assert (await gateway.http.get("/v1/rules")).json()["rules"] == []


async def test_an_item_comes_back_with_the_tags_brand_and_attributes_it_was_sent_with(
    gateway: Gateway,
) -> None:
    # What campaigns' catalog consumer saves of each item the shop sends to PUT /v1/items.
    gateway.store.save(
        [
            CatalogItem.model_validate(
                {
                    "item_id": "rake",
                    "name": "Garden rake",
                    "category": "garden",
                    "price": 25.5,
                    "tags": ["eco", "spring"],
                    "brand": "Acme",
                    "attributes": {"colour": "green", "weight_kg": 1.5},
                }
            )
        ]
    )
    shop = gateway.key("recommendations:read")

    reply = await gateway.http.get("/v1/items/rake", headers=shop)

    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "item_id": "rake",
        "name": "Garden rake",
        "category": "garden",
        "price": 25.5,
        "in_stock": True,
        "tags": ["eco", "spring"],
        "brand": "Acme",
        "attributes": {"colour": "green", "weight_kg": "1.5"},
    }
    unknown = await gateway.http.get("/v1/items/ghost", headers=shop)
    assert unknown.status_code == 404 and "ghost" in unknown.json()["detail"]
    assert (await gateway.http.get("/v1/items/rake", headers={"x-api-key": ""})).status_code == 401


def test_the_documented_body_has_exactly_the_fields_the_rules_take() -> None:
    taken = {name for action in get_args(Rule) for name in action.model_fields}

    assert set(RuleIn.model_fields) == taken
