"""Candidates as the domain code of retrieval, ranking and campaigns sees them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from services.gen.recofleet.common.v1 import common_pb2


@dataclass(frozen=True, slots=True)
class Candidate:
    item_id: str
    score: float
    popularity: float = 0.0
    category: str = ""
    source: str = ""
    # Every source that proposed it, with its calibrated chance (services/retrieval/fusion.py).
    sources: dict[str, float] = field(default_factory=dict)

    def to_proto(self) -> common_pb2.Candidate:
        return common_pb2.Candidate(
            item_id=self.item_id,
            score=self.score,
            popularity=self.popularity,
            category=self.category,
            source=self.source,
            sources=self.sources,
        )

    @classmethod
    def from_proto(cls, message: common_pb2.Candidate) -> Candidate:
        return cls(
            item_id=message.item_id,
            score=message.score,
            popularity=message.popularity,
            category=message.category,
            source=message.source,
            sources=dict(message.sources),
        )


class CandidateLike(Protocol):
    """What rules and rankers read of a candidate: a Candidate, or the protobuf message a
    request carries, used as it is (converting each to a Candidate and back cost more than
    a ranker's or a rule's own work)."""

    @property
    def item_id(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def popularity(self) -> float: ...
    @property
    def category(self) -> str: ...
    @property
    def source(self) -> str: ...


# What a shop can show for the source that argued most for an item (services/retrieval).
SOURCE_REASONS = {
    "als": "picked for you from what you like",
    "buy_again": "you bought this before",
    "bought_together": "often bought together with your items",
    "similar": "similar to the item in view",
    "content": "from a category you like",
    "trending": "trending in the shop",
    "popular": "popular in the shop",
}


def reason_for(source: str) -> str:
    return SOURCE_REASONS.get(source, SOURCE_REASONS["popular"])


def to_protos(candidates: Iterable[Candidate]) -> list[common_pb2.Candidate]:
    return [c.to_proto() for c in candidates]


def from_protos(messages: Iterable[common_pb2.Candidate]) -> list[Candidate]:
    return [Candidate.from_proto(m) for m in messages]
