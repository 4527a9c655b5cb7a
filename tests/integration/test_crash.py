"""Crash test: 50,000 Online Retail events through the gateway while ingestion and the
profiles consumer are killed with SIGKILL mid-stream. Every event must count exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from services.datasets.online_retail import read_rows
from tests.integration.conftest import RunningFleet, fleet_env, running_fleet, wait_ready
from tests.kafka_mock import kafka_cluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail.csv"
EVENTS, BATCH = 50_000, 500


@dataclass
class Expected:
    orders: set[str] = field(default_factory=set)
    spend: float = 0.0
    events: int = 0


def source_events() -> tuple[list[dict], dict[str, Expected]]:
    """One purchase event per clean invoice line, and what each member's profile must show."""
    assert ONLINE_RETAIL.is_file(), f"the Online Retail CSV is missing at {ONLINE_RETAIL}"
    events, expected = [], defaultdict(Expected)
    for n, row in enumerate(read_rows(ONLINE_RETAIL)):
        if n == EVENTS:
            break
        member_id = f"crash-{row.member_id}"
        events.append(
            {
                "event_id": f"crash-line-{n}",
                "type": "purchase",
                "member_id": member_id,
                "order_id": row.invoice_no,
                "items": [
                    {"item_id": row.item_id, "quantity": row.quantity, "price": row.unit_price}
                ],
                "timestamp": row.invoice_date.isoformat() + "Z",
            }
        )
        member = expected[member_id]
        member.orders.add(row.invoice_no)
        member.spend = round(member.spend + round(row.quantity * row.unit_price, 2), 2)
        member.events += 1
    return events, expected


def post_with_retries(http: httpx.Client, body: dict) -> int:
    """What a well-behaved shop client does: retry a batch until it is accepted."""
    for attempt in range(600):
        try:
            reply = http.post("/v1/events", json=body)
            if reply.status_code == 202:
                return attempt
            assert reply.status_code in (502, 503, 504), reply.text
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("a batch was never accepted")


def pid_of(data_dir: Path, name: str) -> int:
    return int((data_dir / "run" / f"{name}.pid").read_text())


def kill_hard(data_dir: Path, name: str) -> int:
    pid = pid_of(data_dir, name)
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.fixture(params=["local", "kafka"])
def crash_fleet(request, tmp_path) -> Iterator[RunningFleet]:
    with contextlib.ExitStack() as stack:
        bootstrap = None
        if request.param == "kafka":
            bootstrap = stack.enter_context(kafka_cluster())
        env = fleet_env(tmp_path, bootstrap)
        env["RECOFLEET_GATEWAY_RATE_LIMIT_PER_S"] = "0"
        env["RECOFLEET_INGESTION_MAX_BATCH_EVENTS"] = "5000"
        yield stack.enter_context(running_fleet(env, tmp_path))


def test_kill_9_of_ingestion_and_profiles_loses_and_doubles_nothing(crash_fleet: RunningFleet):
    url, data_dir, runner = crash_fleet.url, crash_fleet.data_dir, crash_fleet.runner
    events, expected = source_events()
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    killed = {}
    with httpx.Client(
        base_url=url, timeout=30, headers={"x-api-key": crash_fleet.admin_key}
    ) as http:
        for number, batch in enumerate(batches):
            if number == len(batches) * 2 // 5:
                killed = {name: kill_hard(data_dir, name) for name in ("profiles", "ingestion")}
            post_with_retries(http, {"events": batch})
        assert killed, "the processes were never killed"
        wait_ready(url, runner)
        for name, old_pid in killed.items():
            assert pid_of(data_dir, name) != old_pid, f"{name} was not restarted"

        def mismatches() -> list[str]:
            wrong = []
            for member_id, want in expected.items():
                reply = http.get(f"/v1/members/{member_id}/profile")
                got = reply.json() if reply.status_code == 200 else {"events": 0, "rfm": {}}
                seen = (got["events"], got["rfm"].get("frequency"), got["rfm"].get("monetary"))
                if seen != (want.events, len(want.orders), pytest.approx(want.spend, abs=1e-6)):
                    wrong.append(
                        f"{member_id}: {seen} != {want.events, len(want.orders), want.spend}"
                    )
            return wrong

        deadline = time.monotonic() + 240
        while (wrong := mismatches()) and time.monotonic() < deadline:
            time.sleep(1.0)
    assert not wrong, f"{len(wrong)} of {len(expected)} members differ, e.g. {wrong[:3]}"
    assert len(expected) > 500 and sum(e.events for e in expected.values()) == EVENTS
    runner_log = (data_dir / "runner.log").read_text()
    assert "restarting profiles" in runner_log and "restarting ingestion" in runner_log
