"""Experiments and ranker activation through the gateway, over a real ranking service (its
servicer on an in-process gRPC server, its store a SQLite file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from services.common.clock import Clock
from services.gen.recofleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.ranking.domain import RankerBook
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings
from services.ranking.store import SqlRankingStore
from tests.unit.test_gateway_http import ADMIN_KEY, app_with, memory_key_store, settings
from tests.unit.test_gateway_models import FakeRetrieval
from tests.unit.test_ranking_book import KINDS

AT = datetime(2026, 12, 1, 12, tzinfo=UTC)
EXPERIMENT = {
    "name": "scripted vs blend",
    "placement": "home",
    "variants": [
        {"name": "control", "ranker": "blend", "share": 0.5},
        {"name": "treatment", "ranker": "scripted", "share": 0.5},
    ],
}


class Clients:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.retrieval = FakeRetrieval()
        self.ranking = ranking_pb2_grpc.RankingServiceStub(channel)


class Fleet:
    def __init__(self, http: httpx.AsyncClient, book: RankerBook, ranking: Any) -> None:
        self.http, self.book, self.ranking = http, book, ranking

    def publish(self, behaviour: str) -> str:
        def build(folder: Path) -> dict[str, object]:
            (folder / "behaviour.txt").write_text(behaviour)
            return {"trained_at": AT.isoformat(), "trained_from": "interactions"}

        return self.book.model_store("scripted").publish(build)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    store = SqlRankingStore.from_url(f"sqlite:///{tmp_path / 'ranking.db'}")
    book = RankerBook(KINDS, store, RankingSettings(), tmp_path / "models", Clock.fixed(AT))
    server = grpc.aio.server()
    ranking_pb2_grpc.add_RankingServiceServicer_to_server(RankingServicer(book), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    clients = Clients(channel)
    app = app_with(settings(), clients, memory_key_store())  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway",
        headers={"x-api-key": ADMIN_KEY},
    ) as http:
        yield Fleet(http, book, clients.ranking)
    await channel.close()
    await server.stop(None)
    store.close()


async def _rank(fleet: Fleet, member_id: str) -> ranking_pb2.RankResponse:
    request = ranking_pb2.RankRequest(
        member=ranking_pb2.MemberContext(member_id=member_id), placement="home", limit=5
    )
    return await fleet.ranking.Rank(request)


async def test_the_listing_shows_rankers_their_versions_and_the_active_one(fleet: Fleet) -> None:
    version = fleet.publish("ok")

    reply = await fleet.http.get("/v1/models")

    assert reply.status_code == 200, reply.text
    body = reply.json()
    rankers = {r["name"]: r for r in body["rankers"]}
    assert body["active_ranker"] == "blend"
    assert rankers["blend"]["active"] and rankers["blend"]["origin"] == "built-in"
    scripted = rankers["scripted"]
    assert scripted["trained"] and not scripted["active"]
    assert [v["version"] for v in scripted["versions"]] == [version]
    assert scripted["versions"][0]["meta"]["trained_from"] == "interactions"


async def test_activation_probes_then_switches_and_a_broken_version_is_409(fleet: Fleet) -> None:
    good = fleet.publish("ok")
    reply = await fleet.http.post("/v1/models/scripted/activate")
    assert reply.status_code == 200, reply.text
    assert reply.json()["version"] == good and reply.json()["probe_median_ms"] >= 0
    bad = fleet.publish("duplicates")

    refused = await fleet.http.post("/v1/models/scripted/activate", json={"version": bad})

    assert refused.status_code == 409
    assert "twice" in refused.json()["detail"]
    assert (await _rank(fleet, "m-1")).model == f"scripted@{good}"
    listed = (await fleet.http.get("/v1/models")).json()
    versions = {v["version"]: v for r in listed["rankers"] for v in r["versions"]}
    assert "twice" in versions[bad]["refused"]
    assert listed["active_ranker"] == f"scripted@{good}"


async def test_unknown_rankers_are_404(fleet: Fleet) -> None:
    reply = await fleet.http.post("/v1/models/xgboost/activate")

    assert reply.status_code == 404
    assert "unknown ranker 'xgboost'" in reply.json()["detail"]


async def test_an_experiment_runs_its_variants_and_stops_with_a_winner(fleet: Fleet) -> None:
    version = fleet.publish("ok")
    created = await fleet.http.post("/v1/experiments", json=EXPERIMENT)
    assert created.status_code == 201, created.text
    experiment_id = created.json()["experiment_id"]
    assert created.json()["status"] == "draft" and created.json()["control"] == "control"

    started = await fleet.http.post(f"/v1/experiments/{experiment_id}/start")
    assert started.status_code == 200 and started.json()["status"] == "running"
    answers = [await _rank(fleet, f"m-{i}") for i in range(60)]
    assert {(a.variant, a.model) for a in answers} == {
        ("control", "blend"),
        ("treatment", f"scripted@{version}"),
    }
    assert {a.experiment_id for a in answers} == {experiment_id}

    stopped = await fleet.http.post(
        f"/v1/experiments/{experiment_id}/stop", json={"winner": "treatment"}
    )
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["winner"] == "treatment"
    after = await _rank(fleet, "m-1")
    assert (after.variant, after.model) == ("default", f"scripted@{version}")
    again = await fleet.http.post(f"/v1/experiments/{experiment_id}/start")
    assert again.status_code == 409 and "stopped" in again.json()["detail"]


@pytest.mark.parametrize(
    ("change", "status", "fragment"),
    [
        ({"variants": EXPERIMENT["variants"][:1]}, 422, "variants"),
        ({"placement": ""}, 422, "placement"),
        ({"primary_metric": "clicks"}, 422, "primary_metric"),
        ({"colour": "blue"}, 422, "colour"),
        (
            {
                "variants": [
                    {"name": "a", "ranker": "xgboost", "share": 0.5},
                    {"name": "b", "ranker": "blend", "share": 0.5},
                ]
            },
            422,
            "variants[0].ranker: unknown ranker 'xgboost'",
        ),
        (
            {
                "variants": [
                    {"name": "a", "ranker": "blend", "share": 0.6},
                    {"name": "b", "ranker": "blend", "share": 0.6},
                ]
            },
            422,
            "more than 1",
        ),
    ],
)
async def test_a_bad_experiment_is_refused_with_the_field(
    fleet: Fleet, change: dict[str, Any], status: int, fragment: str
) -> None:
    reply = await fleet.http.post("/v1/experiments", json={**EXPERIMENT, **change})

    assert reply.status_code == status, reply.text
    assert fragment in str(reply.json()["detail"])
    assert (await fleet.http.get("/v1/experiments")).json()["experiments"] == []


async def test_ramping_keeps_the_ratio_and_a_new_ratio_is_409(fleet: Fleet) -> None:
    fleet.publish("ok")
    pilot = {**EXPERIMENT, "variants": [{**v, "share": 0.05} for v in EXPERIMENT["variants"]]}
    experiment_id = (await fleet.http.post("/v1/experiments", json=pilot)).json()["experiment_id"]
    await fleet.http.post(f"/v1/experiments/{experiment_id}/start")
    path = f"/v1/experiments/{experiment_id}/shares"

    ramped = await fleet.http.put(path, json={"shares": {"control": 0.5, "treatment": 0.5}})
    skewed = await fleet.http.put(path, json={"shares": {"control": 0.2, "treatment": 0.8}})

    assert ramped.status_code == 200
    assert [v["share"] for v in ramped.json()["variants"]] == [0.5, 0.5]
    assert skewed.status_code == 409 and "only its coverage may change" in skewed.json()["detail"]


async def test_a_variant_that_fails_its_probe_keeps_the_experiment_a_draft(fleet: Fleet) -> None:
    fleet.publish("nan")
    experiment_id = (await fleet.http.post("/v1/experiments", json=EXPERIMENT)).json()[
        "experiment_id"
    ]

    reply = await fleet.http.post(f"/v1/experiments/{experiment_id}/start")

    assert reply.status_code == 409
    assert "variant treatment" in reply.json()["detail"]
    listed = (await fleet.http.get(f"/v1/experiments/{experiment_id}")).json()
    assert listed["status"] == "draft"


async def test_an_unknown_experiment_is_404(fleet: Fleet) -> None:
    assert (await fleet.http.get("/v1/experiments/exp-nope")).status_code == 404
    assert (await fleet.http.post("/v1/experiments/exp-nope/pause")).status_code == 404
