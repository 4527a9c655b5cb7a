"""The gateway's model routes, in process, over a fake retrieval service."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import pytest

from services.gateway.access_keys import SqlAccessKeyStore, create_key
from services.gen.recofleet.ranking.v1 import ranking_pb2
from services.gen.recofleet.retrieval.v1 import retrieval_pb2
from tests.unit.test_gateway_http import (
    ADMIN_KEY,
    app_with,
    assert_error,
    memory_key_store,
    rpc_error,
    settings,
)

FIRST, SECOND, THIRD = (f"2026030{n}T100000000000Z" for n in (1, 2, 3))
WINDOW = {"first": "2025-12-01T08:26:00+00:00", "last": "2026-02-28T17:10:00+00:00"}
METRICS = {"holdout": {"members": 1076, "ndcg@10": 0.2667, "recall@10": 0.1549}}


def version(name: str, current: bool = False, refused: str = "") -> retrieval_pb2.ModelVersion:
    return retrieval_pb2.ModelVersion(
        version=name,
        trained_at="2026-03-01T10:00:00+00:00",
        members=4338,
        items=3665,
        interactions=266_802,
        factors=48,
        current=current,
        refused_reason=refused,
        meta_json=json.dumps({"data_window": WINDOW, "metrics": METRICS, "factors": 48}),
    )


class FakeRetrieval:
    """Three versions, the third current; rolls back as the store would."""

    def __init__(self) -> None:
        self.current = THIRD
        self.error: grpc.aio.AioRpcError | None = None
        self.asked: list[str] = []

    async def ListModels(self, request: Any, timeout: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return retrieval_pb2.ListModelsResponse(
            models=[
                version(FIRST, refused="could not be loaded: truncated"),
                version(SECOND, current=self.current == SECOND),
                version(THIRD, current=self.current == THIRD),
            ],
            served=self.current,
        )

    async def RollbackModel(self, request: Any, timeout: float | None = None) -> Any:
        self.asked.append(request.version)
        if self.error is not None:
            raise self.error
        if request.version and request.version not in (FIRST, SECOND, THIRD):
            raise rpc_error(grpc.StatusCode.NOT_FOUND, f"no model version {request.version!r}")
        if not request.version and self.current == SECOND:
            raise rpc_error(
                grpc.StatusCode.FAILED_PRECONDITION, f"no version before {SECOND} is kept"
            )
        self.current = request.version or SECOND
        return retrieval_pb2.ModelInfo(
            version=self.current,
            members=4338,
            items=3665,
            interactions=266_802,
            factors=48,
            trained_at="2026-03-02T10:00:00+00:00",
        )


class FakeRanking:
    """The blend ranker alone, active."""

    async def ListRankers(self, request: Any, timeout: float | None = None) -> Any:
        blend = ranking_pb2.RankerInfo(name="blend", origin="built-in", active=True)
        return ranking_pb2.ListRankersResponse(rankers=[blend], active="blend")


class Clients:
    def __init__(self) -> None:
        self.retrieval = FakeRetrieval()
        self.ranking = FakeRanking()


@pytest.fixture
def keys() -> SqlAccessKeyStore:
    return memory_key_store()


@pytest.fixture
async def gateway(keys) -> AsyncIterator[tuple[httpx.AsyncClient, Clients]]:
    clients = Clients()
    app = app_with(settings(), clients, keys)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"x-api-key": ADMIN_KEY},
    ) as http:
        yield http, clients


async def test_the_listing_shows_every_kept_version_oldest_first(gateway) -> None:
    http, _ = gateway

    reply = await http.get("/v1/models")

    assert reply.status_code == 200, reply.text
    models = reply.json()["models"]
    assert [m["version"] for m in models] == [FIRST, SECOND, THIRD]
    assert models[2] == {
        "service": "retrieval",
        "version": THIRD,
        "trained_at": "2026-03-01T10:00:00Z",
        "members": 4338,
        "items": 3665,
        "interactions": 266_802,
        "factors": 48,
        "current": True,
        "served": True,
        "refused": None,
        "metrics": METRICS,
        "data_window": WINDOW,
    }
    assert models[0]["refused"] == "could not be loaded: truncated"
    assert not models[0]["current"] and not models[0]["served"]
    assert reply.json()["active_ranker"] == "blend"
    assert [r["name"] for r in reply.json()["rankers"]] == ["blend"]


async def test_a_rollback_without_a_body_goes_to_the_previous_version(gateway) -> None:
    http, clients = gateway

    reply = await http.post("/v1/models/retrieval/rollback")

    assert reply.status_code == 200, reply.text
    assert reply.json()["version"] == SECOND
    assert reply.json()["current"] and reply.json()["served"]
    assert clients.retrieval.asked == [""]
    listed = (await http.get("/v1/models")).json()["models"]
    assert [m["current"] for m in listed] == [False, True, False]


@pytest.mark.parametrize("body", [{}, {"version": THIRD}])
async def test_a_rollback_body_may_be_empty_or_name_a_version(gateway, body) -> None:
    http, clients = gateway

    reply = await http.post("/v1/models/retrieval/rollback", json=body)

    assert reply.status_code == 200, reply.text
    assert reply.json()["version"] == body.get("version", SECOND)
    assert clients.retrieval.asked == [body.get("version", "")]


async def test_nothing_to_roll_back_to_is_409(gateway) -> None:
    http, clients = gateway
    clients.retrieval.current = SECOND

    reply = await http.post("/v1/models/retrieval/rollback")

    assert_error(reply, 409, f"no version before {SECOND} is kept")


async def test_an_unknown_version_is_404(gateway) -> None:
    http, _ = gateway

    reply = await http.post("/v1/models/retrieval/rollback", json={"version": "20990101T0Z"})

    assert_error(reply, 404, "no model version '20990101T0Z'")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"version": ""}, "version:"),
        ({"version": 5}, "version:"),
        ({"version": "../CURRENT"}, "version:"),
        ({"model": "x"}, "model:"),
    ],
)
async def test_a_wrong_body_is_422_and_retrieval_is_not_asked(gateway, body, fragment) -> None:
    http, clients = gateway

    reply = await http.post("/v1/models/retrieval/rollback", json=body)

    assert_error(reply, 422, fragment)
    assert clients.retrieval.asked == []


async def test_a_body_that_is_not_json_is_400_or_415(gateway) -> None:
    http, _ = gateway

    garbled = await http.post(
        "/v1/models/retrieval/rollback",
        content=b"{version",
        headers={"content-type": "application/json"},
    )
    form = await http.post("/v1/models/retrieval/rollback", data={"version": SECOND})

    assert garbled.status_code == 400
    assert form.status_code == 415


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
async def test_retrieval_down_is_503_with_retry_after(gateway, code) -> None:
    http, clients = gateway
    clients.retrieval.error = rpc_error(code)

    listed = await http.get("/v1/models")
    rolled = await http.post("/v1/models/retrieval/rollback")

    for reply in (listed, rolled):
        assert_error(reply, 503, "retrieval unavailable")
        assert reply.headers["retry-after"] == "1"


async def test_reading_needs_a_read_scope_and_rolling_back_needs_admin(gateway, keys) -> None:
    http, clients = gateway
    _, reader = create_key(keys, ["recommendations:read"], "dashboard")
    _, profiles = create_key(keys, ["profiles:read"], "crm")

    listed = await http.get("/v1/models", headers={"x-api-key": reader})
    refused = await http.post("/v1/models/retrieval/rollback", headers={"x-api-key": reader})
    other = await http.get("/v1/models", headers={"x-api-key": profiles})
    keyless = http.build_request("GET", "/v1/models")
    del keyless.headers["x-api-key"]
    anonymous = await http.send(keyless)

    assert listed.status_code == 200
    assert_error(refused, 403, "'admin'")
    assert_error(other, 403, "'recommendations:read'")
    assert anonymous.status_code == 401
    assert clients.retrieval.asked == []


async def test_other_methods_are_405_listing_the_allowed_ones(gateway) -> None:
    http, _ = gateway

    reply = await http.get("/v1/models/retrieval/rollback")

    assert reply.status_code == 405
    assert reply.headers["allow"] == "POST"
