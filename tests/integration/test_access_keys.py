"""Access keys on a running fleet, managed as an operator does: with `recofleet keys`."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.integration.conftest import RunningFleet, cli

pytestmark = pytest.mark.integration


def test_a_key_made_with_the_cli_has_its_scope_only_and_is_refused_soon_after_revoke(
    fleet: RunningFleet,
):
    member_id = json.loads((fleet.data_dir / "loaded.json").read_text())["example_member"]
    key = cli(
        fleet.env, "keys", "create", "--scope", "profiles:read", "--name", "it profile reader"
    ).splitlines()[-1]
    key_id = key.split("_")[1]
    listed = cli(fleet.env, "keys", "list")
    assert key_id in listed and "it profile reader" in listed and key not in listed

    with httpx.Client(base_url=fleet.url, timeout=10) as http:
        bearer = {"authorization": f"Bearer {key}"}
        profile = http.get(f"/v1/members/{member_id}/profile", headers=bearer)
        assert profile.status_code == 200, profile.text
        assert profile.json()["member_id"] == member_id
        as_header = http.get(f"/v1/members/{member_id}/profile", headers={"x-api-key": key})
        assert as_header.status_code == 200

        event = {"type": "view", "member_id": member_id, "item_id": "85123A"}
        refused = http.post("/v1/events", json=event, headers=bearer)
        assert refused.status_code == 403, refused.text
        assert "events:write" in refused.json()["detail"]
        assert (
            http.get(f"/v1/members/{member_id}/recommendations", headers=bearer).status_code == 403
        )

        assert "within a second" in cli(fleet.env, "keys", "revoke", key_id)
        revoked_at = time.monotonic()
        while (
            reply := http.get(f"/v1/members/{member_id}/profile", headers=bearer)
        ).status_code == 200:
            assert time.monotonic() - revoked_at < 1.0, "the revoked key still works after 1 s"
            time.sleep(0.02)
        assert reply.status_code == 401, reply.text
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "revoked" in reply.json()["detail"]
    row = next(line for line in cli(fleet.env, "keys", "list").splitlines() if key_id in line)
    assert row.split()[-1] != "-", f"no revocation time listed: {row}"


def test_without_a_key_only_the_open_paths_answer(fleet: RunningFleet):
    with httpx.Client(base_url=fleet.url, timeout=10) as http:
        missing = http.get("/v1/members/17850/recommendations")
        assert missing.status_code == 401
        assert "Authorization: Bearer" in missing.json()["detail"]
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            assert http.get(path).status_code == 200, path
        admin = {"authorization": f"Bearer {fleet.admin_key}"}
        assert http.get("/v1/items/85123A/similar", headers=admin).status_code == 200


def test_the_key_is_stored_nowhere_in_clear(fleet: RunningFleet):
    key = cli(fleet.env, "keys", "create", "--scope", "admin").splitlines()[-1]
    with httpx.Client(base_url=fleet.url, timeout=10) as http:
        assert http.get("/v1/items/85123A/similar", headers={"x-api-key": key}).status_code == 200
    stored = b"".join(p.read_bytes() for p in fleet.data_dir.rglob("*") if p.is_file())
    for secret in (key, key.split("_", 2)[2], fleet.admin_key):
        assert secret.encode() not in stored
