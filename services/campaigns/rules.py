"""What every recommendation list is filtered of (the merchandiser's own rules come on top:
services/campaigns/merchandising.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.candidates import CandidateLike

C = TypeVar("C", bound=CandidateLike)


@dataclass(frozen=True)
class Removal:
    item_id: str
    reason: str


@dataclass(frozen=True)
class Filtered(Generic[C]):
    kept: list[C]
    removed: list[Removal]


def apply_rules(
    candidates: Sequence[C],
    *,
    purchased: Iterable[str],
    excluded: Iterable[str],
    out_of_stock: Callable[[Sequence[str]], set[str]],
) -> Filtered[C]:
    """Drop what a shop must never recommend: bought already, excluded by the caller, sold out.

    Items the catalog does not know are kept: a missing catalog entry is no reason to hide
    an item the member is likely to want.
    """
    bought, asked = set(purchased), set(excluded)
    sold_out = out_of_stock([c.item_id for c in candidates])
    kept: list[C] = []
    removed: list[Removal] = []
    seen: set[str] = set()
    for candidate in candidates:
        reason = _reason(candidate.item_id, bought, asked, sold_out, seen)
        if reason:
            removed.append(Removal(candidate.item_id, reason))
        else:
            kept.append(candidate)
        seen.add(candidate.item_id)
    return Filtered(kept, removed)


def _reason(
    item_id: str, bought: set[str], asked: set[str], sold_out: set[str], seen: set[str]
) -> str:
    if item_id in seen:
        return "duplicate"
    if item_id in asked:
        return "excluded"
    if item_id in bought:
        return "purchased"
    if item_id in sold_out:
        return "out_of_stock"
    return ""
