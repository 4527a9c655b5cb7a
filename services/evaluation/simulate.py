"""`recofleet simulate`: members who click and buy with a known preference for one variant.

Drives a running fleet through its gateway, as a shop's site would: each simulated visit
asks for the member's recommendations on the experiment's placement, and the member clicks
one of the items shown with a chance that depends on the variant they were shown (the
favoured variant's chance is `ctr * (1 + lift)`, the others' `ctr`), then buys it with
`buy_rate`, at a price drawn from a log-normal. Clicks and purchases carry the answer's
`recommendation_id`, as a shop's tracking would. Because the true rates are known, the
experiment's report can be checked against them: the reported CTR difference should hold
`ctr * lift` inside its interval, and an A/A run (`--lift 0`) should find nothing.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

EVENTS_PER_POST = 200
PRICE_MEDIAN = 20.0


@dataclass(frozen=True)
class Behaviour:
    ctr: float = 0.1
    lift: float = 0.5
    favoured: str = "treatment"
    buy_rate: float = 0.3
    visits: int = 5

    def click_chance(self, variant: str) -> float:
        return min(1.0, self.ctr * (1 + self.lift)) if variant == self.favoured else self.ctr


@dataclass
class Simulated:
    members: int = 0
    visits: Counter[str] = field(default_factory=Counter)
    clicks: Counter[str] = field(default_factory=Counter)
    purchases: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    seconds: float = 0.0

    def summary(self, behaviour: Behaviour) -> dict[str, Any]:
        return {
            "members": self.members,
            "failed_requests": self.failed,
            "seconds": round(self.seconds, 1),
            "variants": {
                variant: {
                    "visits": self.visits[variant],
                    "clicks": self.clicks[variant],
                    "purchases": self.purchases[variant],
                    "true_ctr": behaviour.click_chance(variant),
                }
                for variant in sorted(self.visits)
            },
            "true_ctr_difference": round(behaviour.ctr * behaviour.lift, 6),
        }


def simulate(
    http: httpx.Client,
    placement: str,
    members: Sequence[str],
    behaviour: Behaviour,
    seed: int = 0,
) -> Simulated:
    """Every member's visits, one after the other; their clicks and purchases posted in
    batches. `http` points at the gateway with a key that reads recommendations and writes
    events."""
    rng = random.Random(seed)
    done = Simulated(members=len(members))
    pending: list[dict[str, Any]] = []
    started = time.perf_counter()
    for member_id in members:
        for _ in range(behaviour.visits):
            answer = _visit(http, member_id, placement)
            if answer is None:
                done.failed += 1
                continue
            variant = answer["variant"]
            done.visits[variant] += 1
            pending.extend(_reaction(rng, answer, behaviour, done))
            if len(pending) >= EVENTS_PER_POST:
                _post(http, pending)
                pending = []
    _post(http, pending)
    done.seconds = time.perf_counter() - started
    return done


def _visit(http: httpx.Client, member_id: str, placement: str) -> dict[str, Any] | None:
    reply = http.get(
        f"/v1/members/{member_id}/recommendations", params={"placement": placement, "limit": 5}
    )
    if reply.status_code != 200 or not reply.json()["items"]:
        return None
    answer: dict[str, Any] = reply.json()
    return answer


def _reaction(
    rng: random.Random, answer: dict[str, Any], behaviour: Behaviour, done: Simulated
) -> list[dict[str, Any]]:
    variant = answer["variant"]
    if rng.random() >= behaviour.click_chance(variant):
        return []
    item = rng.choice(answer["items"])
    base = {"member_id": answer["member_id"], "recommendation_id": answer["recommendation_id"]}
    events = [
        {**base, "event_id": f"sim-{uuid.uuid4()}", "type": "click", "item_id": item["item_id"]}
    ]
    done.clicks[variant] += 1
    if rng.random() < behaviour.buy_rate:
        price = round(PRICE_MEDIAN * rng.lognormvariate(0, 0.5), 2)
        events.append(
            {
                **base,
                "event_id": f"sim-{uuid.uuid4()}",
                "type": "purchase",
                "order_id": f"sim-order-{uuid.uuid4()}",
                "items": [{"item_id": item["item_id"], "quantity": 1, "price": price}],
            }
        )
        done.purchases[variant] += 1
    return events


def _post(http: httpx.Client, events: list[dict[str, Any]]) -> None:
    if not events:
        return
    reply = http.post("/v1/events", json={"events": events})
    if reply.status_code != 202 or reply.json().get("rejected"):
        raise RuntimeError(f"events refused ({reply.status_code}): {reply.text[:500]}")


def wait_for_report(
    http: httpx.Client,
    experiment_id: str,
    done: Simulated,
    confidence: float = 0.95,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """The experiment's report once it counts every visit and click of `done` in its
    variants (analytics reads them from the bus a moment after they happened; an answer
    that was degraded, variant `default`, is outside the experiment), or the last one read
    at the timeout."""
    deadline = time.monotonic() + timeout_s
    inside = [v for v in done.visits if v != "default"]
    wanted = sum(done.visits[v] for v in inside), sum(done.clicks[v] for v in inside)
    while True:
        reply = http.get(
            f"/v1/experiments/{experiment_id}/report", params={"confidence": confidence}
        )
        report: dict[str, Any] = reply.json() if reply.status_code == 200 else {}
        variants = report.get("variants", [])
        counted = sum(v["impressions"] for v in variants), sum(v["clicks"] for v in variants)
        if counted >= wanted or time.monotonic() > deadline:
            return report
        time.sleep(0.5)


def reading(report: dict[str, Any], behaviour: Behaviour) -> list[str]:
    """Each variant's CTR against the control, and whether the true difference is inside
    the reported interval."""
    lines = list(report.get("warnings", []))
    control = report.get("experiment", {}).get("control", "")
    for variant in report.get("variants", []):
        for difference in variant["differences"]:
            if difference["metric"] != "ctr":
                continue
            truth = behaviour.click_chance(variant["name"]) - behaviour.click_chance(control)
            d = difference
            inside = d["low"] <= truth <= d["high"]
            lines.append(
                f"{variant['name']} vs {control}: CTR {d['treatment']['value']:.4f} vs "
                f"{d['control']['value']:.4f}, difference {d['absolute']:+.4f} "
                f"[{d['low']:+.4f}, {d['high']:+.4f}], p={d['p_value']:.3g} ({d['method']}); "
                f"the true difference {truth:+.4f} is {'inside' if inside else 'OUTSIDE'} "
                "the interval"
            )
    return lines


def members_of(candidates: Sequence[str], count: int, seed: int) -> list[str]:
    """`count` members drawn from the data's (visitors of the simulation's own beyond)."""
    pool = sorted(set(candidates))
    rng = random.Random(seed)
    drawn = rng.sample(pool, min(count, len(pool)))
    return drawn + [f"sim-visitor-{i}" for i in range(count - len(drawn))]
