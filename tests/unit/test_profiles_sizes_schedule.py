"""The profiles service counts segment sizes on its own: not at start, then on schedule,
and a failed count does not end the schedule."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.profiles import server
from services.profiles.server import keep_sizes_counted


class Counting:
    def __init__(self, failures: int) -> None:
        self.calls = 0
        self.failures = failures

    def sizes(self) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("the store is away")
        return type("Sizes", (), {"members": 3})()


async def test_the_first_count_waits_then_counts_go_on_after_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(server.asyncio, "sleep", sleep)
    counting = Counting(failures=1)
    task = asyncio.create_task(keep_sizes_counted(counting, interval_s=21600))  # type: ignore[arg-type]
    while counting.calls < 3:
        await real_sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slept[0] == server.FIRST_COUNT_S  # not at start: after five minutes
    assert slept[1:3] == [21600, 21600]
    assert counting.calls >= 3  # the failed count did not end it
