"""What this gateway replica accepted and served, second by second over the last hour.

Events accepted by ingestion, recommendation answers, and the degraded ones among them, each
counted in a ring of one slot per second for an hour (three small integer lists, no I/O), so
that the overview reads rates over the last minute and a series per minute without asking
anyone.

Each replica counts only what it handled: behind a load balancer, every replica answers
its own share, and the fleet's traffic is the sum over replicas (what Prometheus adds up
from `recofleet_gateway_requests_total`). A service could not count these better: analytics
keeps impressions, but shops send theirs too and they arrive in batches, and no service
sees every accepted event apart from ingestion, whose replicas would be counted alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.clock import Clock

HOUR_S = 3600
MINUTE_S = 60


@dataclass(frozen=True)
class Minute:
    starts_at: datetime
    events: int
    recommendations: int
    degraded: int


@dataclass(frozen=True)
class TrafficWindow:
    as_of: datetime
    # Over the last 60 seconds.
    events_per_second: float
    recommendations_per_second: float
    # The last 60 minutes, the oldest first; the last one is the minute under way.
    minutes: list[Minute]

    @property
    def degraded(self) -> int:
        return sum(minute.degraded for minute in self.minutes)


class Traffic:
    """Counts per second of the fleet clock, kept for an hour."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._second = [-1] * HOUR_S  # the second each slot counts now
        self._events = [0] * HOUR_S
        self._recommendations = [0] * HOUR_S
        self._degraded = [0] * HOUR_S

    def accepted(self, events: int) -> None:
        """Ingestion accepted `events` events of a request."""
        if events > 0:
            self._events[self._slot(self._now())] += events

    def served(self, degraded: bool) -> None:
        """A recommendation answer went out (degraded or not)."""
        slot = self._slot(self._now())
        self._recommendations[slot] += 1
        if degraded:
            self._degraded[slot] += 1

    def window(self) -> TrafficWindow:
        now = self._now()
        current_minute = now - now % MINUTE_S
        minutes = [
            self._minute(current_minute - MINUTE_S * back) for back in range(MINUTE_S - 1, -1, -1)
        ]
        last = range(now - MINUTE_S + 1, now + 1)
        return TrafficWindow(
            as_of=_instant(now),
            events_per_second=self._total(self._events, last) / MINUTE_S,
            recommendations_per_second=self._total(self._recommendations, last) / MINUTE_S,
            minutes=minutes,
        )

    def _minute(self, starts: int) -> Minute:
        seconds = range(starts, starts + MINUTE_S)
        return Minute(
            starts_at=_instant(starts),
            events=self._total(self._events, seconds),
            recommendations=self._total(self._recommendations, seconds),
            degraded=self._total(self._degraded, seconds),
        )

    def _total(self, counts: list[int], seconds: range) -> int:
        # A slot still holding an older second (nothing came since) counts nothing here.
        return sum(counts[s % HOUR_S] for s in seconds if self._second[s % HOUR_S] == s)

    def _slot(self, second: int) -> int:
        slot = second % HOUR_S
        if self._second[slot] != second:
            self._second[slot] = second
            self._events[slot] = self._recommendations[slot] = self._degraded[slot] = 0
        return slot

    def _now(self) -> int:
        return int(self._clock.now().timestamp())


def _instant(second: int) -> datetime:
    return datetime.fromtimestamp(second, UTC)
