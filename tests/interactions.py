"""What a retrieval interaction store holds, read through the methods serving and training
use (`member_activity`, `training_rows`), in the shapes the store tests compare."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from services.retrieval.store import InteractionStore


class Interaction(NamedTuple):
    member_id: str
    item_id: str
    weight: float


def history(store: InteractionStore, member_id: str, limit: int) -> dict[str, float]:
    """The member's latest `limit` lines, their weights summed per item."""
    summed: dict[str, float] = {}
    for line in store.member_activity(member_id, limit):
        summed[line.item_id] = summed.get(line.item_id, 0.0) + line.weight
    return summed


def interactions(store: InteractionStore) -> Iterator[Interaction]:
    """Every member and item with the summed weight of their lines (the training data)."""
    summed: dict[tuple[str, str], float] = {}
    for row in store.training_rows():
        key = (row.member_id, row.item_id)
        summed[key] = summed.get(key, 0.0) + row.weight
    for (member_id, item_id), weight in summed.items():
        yield Interaction(member_id, item_id, weight)
