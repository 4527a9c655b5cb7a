"""Answers kept between the events that change them.

A member's home page asks for the same candidates again and again between two of their
events; computing them is most of retrieval's CPU. An answer is kept, by the request that
asked for it, until something it depends on changes:

- the member's lines: the consumer marks the members its batches touched (after the
  batch is committed), which drops their answers, so their next request sees the event;
- the catalog (stock, new items) or the model: everything is dropped;
- time: an answer older than `ttl_s` is computed again (buy-again decays with age).

An answer computed while its member was touched (it read the lines before the commit,
the mark came before it was kept) is not kept, as in the activity cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from services.retrieval.activity import MemberMarks

V = TypeVar("V")


class AnswerCache(Generic[V]):
    def __init__(
        self, capacity: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = capacity
        self._ttl_s = ttl_s
        self._clock = clock
        self._answers: OrderedDict[tuple[str, Hashable], tuple[float, V]] = OrderedDict()
        self._by_member: dict[str, set[Hashable]] = {}
        self._marks = MemberMarks(capacity)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    def generation(self) -> int:
        """Read before computing an answer, passed to `put` with it."""
        with self._lock:
            return self._marks.generation

    def get(self, member_id: str, key: Hashable) -> V | None:
        with self._lock:
            found = self._answers.get((member_id, key))
            if found is None or found[0] < self._clock():
                self.misses += 1
                return None
            self._answers.move_to_end((member_id, key))
            self.hits += 1
            return found[1]

    def put(self, member_id: str, key: Hashable, answer: V, started: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            if not self._marks.fresh(member_id, started):
                return  # computed from what changed meanwhile
            self._answers[(member_id, key)] = (self._clock() + self._ttl_s, answer)
            self._answers.move_to_end((member_id, key))
            self._by_member.setdefault(member_id, set()).add(key)
            while len(self._answers) > self._capacity:
                (old_member, old_key), _ = self._answers.popitem(last=False)
                self._forget_key(old_member, old_key)

    def touched(self, member_ids: Iterable[str]) -> None:
        """These members' lines changed in the store: their answers go."""
        members = list(member_ids)
        with self._lock:
            self._marks.mark(members)
            for member_id in members:
                for key in self._by_member.pop(member_id, ()):
                    self._answers.pop((member_id, key), None)

    def clear(self) -> None:
        """Everything an answer depends on may have changed (catalog, model)."""
        with self._lock:
            self._marks.forget_all()
            self._answers.clear()
            self._by_member.clear()

    def __len__(self) -> int:
        return len(self._answers)

    def _forget_key(self, member_id: str, key: Hashable) -> None:
        keys = self._by_member.get(member_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_member[member_id]
