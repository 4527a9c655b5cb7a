"""A consumer's store drops away for 10 s mid-traffic: nothing is lost or dead-lettered.

The profiles service reaches PostgreSQL through a TCP proxy the test cuts (open
connections reset, new ones refused) while events keep arriving; when it is restored every
event is in the profiles, once, and the dead letters are empty.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import (
    cli,
    fleet_env,
    postgres_schemas,
    running_fleet,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.timeout(600)
OUTAGE_S = 10.0


def _views(member_ids: list[str], round_: int) -> list[dict]:
    return [
        {
            "event_id": f"outage-{round_}-{member_id}",
            "type": "view",
            "member_id": member_id,
            "item_id": "85123A",
        }
        for member_id in member_ids
    ]


def test_a_store_cut_for_ten_seconds_loses_and_dead_letters_nothing(tmp_path: Path) -> None:
    members = [f"outage-{uuid.uuid4().hex[:6]}-{n}" for n in range(40)]
    with (
        postgres_schemas(f"outage_{uuid.uuid4().hex[:8]}") as schemas,
        TcpProxy("127.0.0.1", 5432) as proxy,
    ):
        env = fleet_env(tmp_path)
        env["RECOFLEET_PROFILES_DATABASE_URL"] = (
            f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
            f"?options=-csearch_path%3D{schemas['profiles']}"
        )
        env["RECOFLEET_GATEWAY_RATE_LIMIT_PER_S"] = "0"
        with running_fleet(env, tmp_path) as fleet, fleet.client() as http:
            rounds = 0

            def post_round() -> None:
                nonlocal rounds
                reply = http.post("/v1/events", json={"events": _views(members, rounds)})
                assert reply.status_code == 202, reply.text
                rounds += 1

            post_round()
            proxy.cut()
            cut_at = time.monotonic()
            while time.monotonic() - cut_at < OUTAGE_S:
                post_round()  # ingestion does not need the profiles store: all accepted
                time.sleep(1.0)
            proxy.restore()
            post_round()

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                counts = [_events_of(http, m) for m in members]
                if counts == [rounds] * len(members):
                    break
                time.sleep(1.0)
            assert counts == [rounds] * len(members), f"{rounds} rounds, profiles saw {counts}"
            assert proxy.refused > 0, "the outage never reached the consumer"
        dead = cli(env, "dead-letters", "list")
        assert dead.strip().endswith("0 dead letters"), dead
        log = (tmp_path / "logs" / "profiles.log").read_text()
        assert "paused" in log  # the consumer saw the outage and waited it out


def _events_of(http, member_id: str) -> int:
    reply = http.get(f"/v1/members/{member_id}/profile")
    return reply.json()["events"] if reply.status_code == 200 else 0
