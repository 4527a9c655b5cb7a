"""Answers kept between a member's events: dropped by what changes them, never stale."""

from __future__ import annotations

from services.retrieval.answers import AnswerCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_kept_until_the_members_next_event() -> None:
    cache: AnswerCache[str] = AnswerCache(capacity=10, ttl_s=60)
    cache.put("ann", "home", "first", cache.generation())
    cache.put("bob", "home", "bobs", cache.generation())

    assert cache.get("ann", "home") == "first"
    cache.touched(["ann"])
    assert cache.get("ann", "home") is None
    assert cache.get("bob", "home") == "bobs"  # another member's answer stays


def test_an_answer_computed_across_the_members_event_is_not_kept() -> None:
    cache: AnswerCache[str] = AnswerCache(capacity=10, ttl_s=60)
    started = cache.generation()  # the lines are read...
    cache.touched(["ann"])  # ...an event of theirs is committed...
    cache.put("ann", "home", "stale", started)  # ...then the answer is done

    assert cache.get("ann", "home") is None
    cache.put("ann", "home", "fresh", cache.generation())
    assert cache.get("ann", "home") == "fresh"


def test_a_catalog_or_model_change_drops_every_answer() -> None:
    cache: AnswerCache[str] = AnswerCache(capacity=10, ttl_s=60)
    started = cache.generation()
    cache.put("", "similar:mug", "neighbours", started)
    cache.clear()
    cache.put("ann", "home", "from before the change", started)

    assert cache.get("", "similar:mug") is None
    assert cache.get("ann", "home") is None


def test_answers_expire_and_the_least_recently_asked_go_first() -> None:
    clock = Clock()
    cache: AnswerCache[str] = AnswerCache(capacity=2, ttl_s=30, clock=clock)
    for member in ("ann", "bob"):
        cache.put(member, "home", member, cache.generation())
    assert cache.get("ann", "home") == "ann"  # bob is now the least recently asked
    cache.put("cy", "home", "cy", cache.generation())

    assert cache.get("bob", "home") is None
    assert len(cache) == 2
    clock.now = 31
    assert cache.get("ann", "home") is None and cache.get("cy", "home") is None


def test_a_size_of_zero_keeps_nothing() -> None:
    cache: AnswerCache[str] = AnswerCache(capacity=0, ttl_s=30)
    cache.put("ann", "home", "x", cache.generation())
    assert cache.get("ann", "home") is None and len(cache) == 0
