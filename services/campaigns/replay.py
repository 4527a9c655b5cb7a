"""`recofleet campaigns replay`: purchases by a campaign's members with a known uplift, sent
to a running fleet, so that its report can be read (and checked) before real orders come.

Every member the campaign reached or held out buys with `buy_rate`; the exposed ones with
`buy_rate + lift` more, and a share of those buyers use the code they were given. The
report's conversion uplift should then hold `lift` within its interval (docs/campaigns.md).
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

BATCH = 500


@dataclass(frozen=True)
class Behaviour:
    buy_rate: float
    lift: float
    redeem_share: float
    order_value: float
    seed: int


@dataclass
class Replayed:
    members: dict[str, int] = field(default_factory=lambda: {"treatment": 0, "control": 0})
    buyers: dict[str, int] = field(default_factory=lambda: {"treatment": 0, "control": 0})
    redeemed: int = 0

    def rate(self, group: str) -> float:
        return self.buyers[group] / self.members[group] if self.members[group] else 0.0


def purchases(
    members: dict[str, tuple[str, str]], items: Sequence[str], behaviour: Behaviour
) -> tuple[list[dict[str, Any]], Replayed]:
    """The purchase events of the campaign's members (member -> (group, code))."""
    rng = random.Random(behaviour.seed)
    done, events = Replayed(), []
    for member_id in sorted(members):
        group, code = members[member_id]
        done.members[group] += 1
        chance = behaviour.buy_rate + (behaviour.lift if group == "treatment" else 0.0)
        if rng.random() >= chance:
            continue
        done.buyers[group] += 1
        value = round(behaviour.order_value * rng.lognormvariate(0, 0.3), 2)
        event: dict[str, Any] = {
            "event_id": f"replay-{uuid.uuid4()}",
            "type": "purchase",
            "member_id": member_id,
            "order_id": f"replay-order-{uuid.uuid4()}",
            "items": [{"item_id": rng.choice(items), "quantity": 1, "price": value}],
        }
        if group == "treatment" and code and rng.random() < behaviour.redeem_share:
            event["context"] = {"coupon": code}
            done.redeemed += 1
        events.append(event)
    return events, done


def send(http: httpx.Client, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), BATCH):
        reply = http.post("/v1/events", json={"events": events[start : start + BATCH]})
        reply.raise_for_status()
