"""The gateway replica's own traffic counts: per second for an hour, read per minute."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.common.clock import Clock
from services.gateway.traffic import Traffic

START = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


class Hands:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.at = START

    def clock(self) -> Clock:
        return Clock(source=lambda: self.at)

    def wait(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def test_rates_cover_the_last_minute_and_the_series_the_last_hour() -> None:
    hands = Hands()
    traffic = Traffic(hands.clock())
    traffic.accepted(30)
    traffic.served(degraded=False)
    hands.wait(90)  # 12:01:30
    traffic.accepted(60)
    traffic.served(degraded=True)
    traffic.served(degraded=False)

    window = traffic.window()

    assert window.as_of == START + timedelta(seconds=90)
    assert window.events_per_second == 1.0  # the 60 of the last minute; the 30 are older
    assert window.recommendations_per_second == 2 / 60
    assert len(window.minutes) == 60
    assert window.minutes[-1].starts_at == START + timedelta(minutes=1)
    assert [(m.events, m.recommendations, m.degraded) for m in window.minutes[-2:]] == [
        (30, 1, 0),
        (60, 2, 1),
    ]
    assert window.degraded == 1


def test_what_is_older_than_an_hour_is_forgotten_even_where_its_slot_is_reused() -> None:
    hands = Hands()
    traffic = Traffic(hands.clock())
    traffic.accepted(5)
    hands.wait(3600)  # the same slot of the ring, an hour later
    traffic.accepted(1)

    window = traffic.window()

    assert sum(m.events for m in window.minutes) == 1
    hands.wait(3600)
    assert sum(m.events for m in traffic.window().minutes) == 0
    assert traffic.window().events_per_second == 0.0


def test_nothing_accepted_counts_nothing() -> None:
    traffic = Traffic(Hands().clock())
    traffic.accepted(0)

    assert traffic.window().minutes[-1].events == 0
