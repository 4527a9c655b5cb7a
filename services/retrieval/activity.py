"""Members' latest interactions, kept in memory for serving.

A request reads the member's lines from here, not from SQL: the first request for a
member loads them once, and the consumer marks the members its batches touched (after the
batch is committed) so the next request reloads theirs. A load that raced a batch for the
same member (it read before the commit, the mark came before it cached) is not kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from services.retrieval.store import Activity

Loader = Callable[[str], list[Activity]]


class MemberMarks:
    """Which members changed, and when, in generations: what a cache needs to refuse a value
    computed from lines that changed while it was computed. Not thread-safe: its cache's
    lock guards it."""

    def __init__(self, capacity: int) -> None:
        self._capacity = max(capacity, 1)
        self._touched: dict[str, int] = {}
        self.generation = 0
        self._forgot_all_at = 0

    def mark(self, member_ids: Iterable[str]) -> None:
        self.generation += 1
        for member_id in member_ids:
            self._touched[member_id] = self.generation
        if len(self._touched) > 4 * self._capacity:
            # Forget who was touched when; values computed before now are not kept.
            self.forget_all()

    def forget_all(self) -> None:
        self.generation += 1
        self._forgot_all_at = self.generation
        self._touched.clear()

    def fresh(self, member_id: str, started: int) -> bool:
        """Whether a value of the member's computed from generation `started` is current."""
        if started < self._forgot_all_at:
            return False
        return self._touched.get(member_id, 0) <= started


class ActivityCache:
    def __init__(self, load: Loader, capacity: int) -> None:
        self._load = load
        self._capacity = capacity
        self._lines: OrderedDict[str, list[Activity]] = OrderedDict()
        self._marks = MemberMarks(capacity)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, member_id: str) -> list[Activity]:
        with self._lock:
            lines = self._lines.get(member_id)
            if lines is not None:
                self._lines.move_to_end(member_id)
                self.hits += 1
                return lines
            self.misses += 1
            started = self._marks.generation
        lines = self._load(member_id)
        with self._lock:
            if self._marks.fresh(member_id, started):
                self._lines[member_id] = lines
                while len(self._lines) > self._capacity:
                    self._lines.popitem(last=False)
        return lines

    def touched(self, member_ids: Iterable[str]) -> None:
        """These members' lines changed in the store (new events, a link, an erasure)."""
        members = list(member_ids)
        with self._lock:
            self._marks.mark(members)
            for member_id in members:
                self._lines.pop(member_id, None)

    def clear(self) -> None:
        with self._lock:
            self._marks.forget_all()
            self._lines.clear()

    def __len__(self) -> int:
        return len(self._lines)
