"""On a running fleet: train the learned ranker, activate it, and put it against the blend
ranker in an experiment, as docs/models.md walks through."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import RunningFleet, cli

MEMBERS = 40


@pytest.fixture
def admin(fleet: RunningFleet) -> Iterator[httpx.Client]:
    """A key of its own (its own rate-limit bucket); the fleet is left as it was found: no
    experiment running, the blend ranker active."""
    with fleet.client(key=fleet.new_key("admin", name="experiments tests")) as http:
        try:
            yield http
        finally:
            for experiment in http.get("/v1/experiments").json()["experiments"]:
                if experiment["status"] != "stopped":
                    http.post(f"/v1/experiments/{experiment['experiment_id']}/stop")
            assert http.post("/v1/models/blend/activate").status_code == 200


def _members(fleet: RunningFleet) -> list[str]:
    loaded = json.loads((fleet.data_dir / "loaded.json").read_text())
    return [loaded["example_member"], *[f"visitor-{i}" for i in range(MEMBERS - 1)]]


def _answers(http: httpx.Client, members: list[str]) -> list[dict]:
    answers = []
    for member_id in members:
        reply = http.get(f"/v1/members/{member_id}/recommendations", params={"limit": 5})
        assert reply.status_code == 200, reply.text
        answers.append(reply.json())
    return answers


def _eventually(check, timeout_s: float = 1.5):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_trained_ranker_is_activated_then_tested_against_the_blend(
    fleet: RunningFleet, admin: httpx.Client
) -> None:
    trained = cli(fleet.env, "train-ranker")
    listed = admin.get("/v1/models").json()
    ltr = next(r for r in listed["rankers"] if r["name"] == "ltr")
    version = ltr["versions"][-1]["version"]
    # From interactions on a new fleet; from impressions once some with outcomes are logged
    # (the simulation test's, when it ran first): either way the command says which.
    said = {
        "interactions": "interactions with sampled negatives",
        "impressions": "logged impressions and their outcomes",
    }
    assert f"trained ltr {version}" in trained
    assert said[ltr["versions"][-1]["meta"]["trained_from"]] in trained

    activated = admin.post("/v1/models/ltr/activate")
    assert activated.status_code == 200, activated.text
    member = _members(fleet)[0]

    def served_by_ltr() -> bool:
        body = admin.get(f"/v1/members/{member}/recommendations").json()
        return bool(body["model"].startswith(f"ltr@{version}+als@"))

    assert _eventually(served_by_ltr)

    created = admin.post(
        "/v1/experiments",
        json={
            "name": "ltr against blend",
            "placement": "home",
            "variants": [
                {"name": "control", "ranker": "blend", "share": 0.5},
                {"name": "treatment", "ranker": "ltr", "share": 0.5},
            ],
        },
    )
    assert created.status_code == 201, created.text
    experiment_id = created.json()["experiment_id"]
    assert admin.post(f"/v1/experiments/{experiment_id}/start").status_code == 200

    answers = _answers(admin, _members(fleet))
    by_variant = {a["variant"]: a["model"].split("+")[0] for a in answers}
    assert by_variant == {"control": "blend", "treatment": f"ltr@{version}"}
    assert {a["experiment_id"] for a in answers} == {experiment_id}
    # Sticky: the same members get the same variants on their next requests.
    again = _answers(admin, _members(fleet))
    assert [a["variant"] for a in again] == [a["variant"] for a in answers]
    # Other placements are outside the experiment.
    cart = admin.get(f"/v1/members/{member}/recommendations", params={"placement": "cart"})
    assert cart.json()["variant"] == "default"

    paused = admin.post(f"/v1/experiments/{experiment_id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    after = admin.get(f"/v1/members/{member}/recommendations").json()
    assert after["variant"] == "default" and after.get("experiment_id") is None
