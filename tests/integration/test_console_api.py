"""On a running fleet, what the web console reads: whose key it holds, the overview of the
fleet, suggested segments saved as they come, a rule previewed before it is saved, the
segments a member is in."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from services.common.events import Event
from services.datasets.online_retail import load_jsonl_gz
from services.loading import SAMPLE_DIR, example_member
from tests.integration.conftest import RunningFleet

pytestmark = pytest.mark.integration
# Longer than any consumer takes to apply an event here; the overview is read each time.
SETTLE_S = 15.0


@pytest.fixture
def admin(fleet: RunningFleet) -> Iterator[httpx.Client]:
    """A key of its own: its own rate-limit bucket for the events it sends."""
    with fleet.client(key=fleet.new_key("admin", name="console tests")) as http:
        yield http


def _within(seconds: float, check: Callable[[], Any]) -> Any:
    """`check()` once it is truthy, polling; its last value after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _overview(http: httpx.Client) -> dict[str, Any]:
    reply = http.get("/v1/overview")
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def _ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["item_id"] for item in items]


def test_the_access_key_says_whose_it_is_and_what_it_may_do(fleet: RunningFleet) -> None:
    with fleet.client() as http:
        env = http.get("/v1/access-key").json()
    reader_key = fleet.new_key("profiles:read", name="console reader")
    with fleet.client(key=reader_key) as http:
        reader = http.get("/v1/access-key")

    assert (env["key_id"], env["scopes"]) == ("env", ["admin"])
    assert reader.status_code == 200, reader.text
    assert reader.json()["name"] == "console reader"
    assert reader.json()["scopes"] == reader.json()["allows"] == ["profiles:read"]
    assert reader_key.split("_")[1] == reader.json()["key_id"]


def test_the_overview_counts_every_member_the_profiles_store_holds(admin: httpx.Client) -> None:
    loaded = {e.member_id for e in load_jsonl_gz(SAMPLE_DIR / "events.jsonl.gz", Event)}
    before = _overview(admin)
    assert before["unavailable"] == []
    # Every loaded member is a profile (other tests of the session may have added some).
    assert before["members"] >= len(loaded) == 600

    newcomer = f"console-{uuid.uuid4().hex[:12]}"
    sent = admin.post(
        "/v1/events", json={"type": "view", "member_id": newcomer, "item_id": "85123A"}
    )
    assert sent.status_code == 202, sent.text

    grown = _within(SETTLE_S, lambda: _overview(admin)["members"] == before["members"] + 1)
    assert grown, "the overview did not count the new member"

    def as_listed() -> bool:
        # The segments listing counts every profile too (at most every 10 s).
        return bool(admin.get("/v1/segments").json()["members"] == _overview(admin)["members"])

    assert _within(SETTLE_S, as_listed)


def test_the_overview_shows_this_gateways_traffic_models_and_consumers(
    admin: httpx.Client, fleet: RunningFleet
) -> None:
    member = f"console-{uuid.uuid4().hex[:12]}"
    events = [{"type": "view", "member_id": member, "item_id": "85123A"} for _ in range(3)]
    assert admin.post("/v1/events", json={"events": events}).json()["accepted"] == 3
    answer = admin.get(f"/v1/members/{member}/recommendations", params={"limit": 5})
    assert answer.status_code == 200, answer.text

    body = _overview(admin)

    series = body["series"]
    assert sum(count for _, count in series["events"]) >= 3
    assert sum(count for _, count in series["recommendations"]) >= 1
    assert body["events_per_second"] >= 3 / 60 and body["recommendations_per_second"] > 0
    assert {len(points) for points in series.values()} == {60}
    # The models the services serve: one retrieval version current, one active ranker.
    retrieval = [m for m in body["models"] if m["kind"] == "retrieval"]
    assert [m["active"] for m in retrieval].count(True) == 1
    assert [m["active"] for m in body["models"] if m["kind"] == "ranker"].count(True) == 1
    # Read from the bus: each service's group, caught up within seconds.
    groups = {(c["group"], c["topic"]) for c in body["consumers"]}
    assert {("profiles", "recofleet.events"), ("analytics", "recofleet.events")} <= groups

    def caught_up() -> bool:
        lags = {(c["group"], c["topic"]): c["lag"] for c in _overview(admin)["consumers"]}
        return lags[("profiles", "recofleet.events")] == 0

    assert _within(SETTLE_S, caught_up), "the profiles consumer never caught up"
    assert body["dead_letters"] >= 0 and body["consumers_unknown"] is None


def test_a_suggested_segment_is_saved_as_it_comes(admin: httpx.Client) -> None:
    found = admin.post("/v1/segments/discover", json={"clusters": 3}, timeout=120)

    assert found.status_code == 200, found.text
    body = found.json()
    clusters = body["clusters"]
    assert len(clusters) == 3 and sum(c["size"] for c in clusters) == body["clustered"]
    first = clusters[0]
    name = f"test-{first['name']}"[:64]
    try:
        saved = admin.put(f"/v1/segments/{name}", json=first["conditions"], timeout=120)
        assert saved.status_code == 200, saved.text
        # The condition approximates the cluster: about its size.
        assert saved.json()["size"] > first["size"] * first["recall"] * 0.5
        assert saved.json()["condition"] == first["conditions"]["condition"]
    finally:
        admin.delete(f"/v1/segments/{name}")


def test_a_previewed_pin_moves_the_item_and_is_not_saved(
    admin: httpx.Client, fleet: RunningFleet
) -> None:
    member = example_member(fleet.data_dir)
    assert member

    def home() -> list[str] | None:
        answer = admin.get(f"/v1/members/{member}/recommendations", params={"limit": 5}).json()
        return None if answer["degraded"] else _ids(answer["items"])

    shown = _within(5.0, home)
    assert shown, "no answer that was not degraded"
    hero = shown[-1]
    name = f"test-preview-{uuid.uuid4().hex[:6]}"
    draft = {"name": name, "action": "pin", "item_id": hero, "position": 1}

    reply = admin.post(
        "/v1/rules/preview",
        json={"placement": "home", "member_id": member, "limit": 5, "rule": draft},
    )

    assert reply.status_code == 200, reply.text
    before, after = _ids(reply.json()["before"]), _ids(reply.json()["after"])
    assert before[-1] == hero and after[0] == hero
    # The other items keep their order, one place down.
    assert after[1:] == before[:-1]
    assert f"pinned by rule {name}" in reply.json()["after"][0]["reasons"]
    # What the member sees now is the list without the draft, which was never saved.
    assert _within(5.0, lambda: home() == before)
    assert name not in [r["name"] for r in admin.get("/v1/rules").json()["rules"]]


def test_a_members_segments_are_those_of_their_profile(admin: httpx.Client, fleet: RunningFleet):
    member = example_member(fleet.data_dir)

    reply = admin.get(f"/v1/members/{member}/segments")

    assert reply.status_code == 200, reply.text
    profile = admin.get(f"/v1/members/{member}/profile").json()
    assert reply.json()["segments"] == profile["segments"]
    assert profile["lifecycle"] in reply.json()["segments"]
    assert admin.get("/v1/members/nobody-at-all-here/segments").status_code == 404


def test_the_models_carry_their_offline_metrics(admin: httpx.Client) -> None:
    models = admin.get("/v1/models").json()["models"]

    current = next(m for m in models if m["current"])
    assert "ndcg@10" in current["metrics"]["holdout"]
    assert current["data_window"]["first"] <= current["data_window"]["last"]
