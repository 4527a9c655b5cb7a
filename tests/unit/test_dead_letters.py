"""A record a consumer cannot apply goes to the dead letters with its reason; replay works."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError, OperationalError

from services.common import dead_letters
from services.common.bus import CATALOG_TOPIC, EVENTS_TOPIC, BusError, Message
from services.common.bus.local_log import LocalLogBus
from services.common.consuming import BusWorker, decode, transient
from services.common.events import Event


def _bus(tmp_path):
    bus = LocalLogBus(tmp_path / "bus", partitions=2)
    bus.ensure_topics([EVENTS_TOPIC, CATALOG_TOPIC, dead_letters.DEAD_LETTERS_TOPIC])
    return bus


def _recording_worker(bus, applied, fail_on=()):
    def handle(records):
        decoded = decode(records)
        for event in decoded.events:
            if event.event_id in fail_on:
                raise RuntimeError(f"cannot apply {event.event_id}")
        applied.extend(e.event_id for e in decoded.events)
        return decoded.dead

    return BusWorker(bus, "profiles", [EVENTS_TOPIC], handle, attempts=2)


def _event(event_id: str) -> Message:
    event = Event(event_id=event_id, type="view", member_id="m-1", item_id="sku-1")
    return Message(event.member_id, event.to_bytes())


def test_an_unreadable_record_is_dead_lettered_and_the_rest_applied(tmp_path):
    bus = _bus(tmp_path)
    bus.publish(EVENTS_TOPIC, [_event("e-1"), Message("m-1", b"{not an event"), _event("e-2")])
    applied: list[str] = []
    _recording_worker(bus, applied).drain()

    assert applied == ["e-1", "e-2"]
    letters = list(dead_letters.read(bus))
    assert len(letters) == 1
    assert letters[0].group == "profiles" and letters[0].topic == EVENTS_TOPIC
    assert "unreadable record" in letters[0].reason
    assert letters[0].value == b"{not an event"
    assert bus.lag("profiles", EVENTS_TOPIC) == 0


def test_a_record_that_keeps_failing_does_not_hold_back_the_others(tmp_path):
    bus = _bus(tmp_path)
    bus.publish(EVENTS_TOPIC, [_event("e-1"), _event("poison"), _event("e-3")])
    applied: list[str] = []
    _recording_worker(bus, applied, fail_on={"poison"}).drain()

    assert set(applied) == {"e-1", "e-3"}
    (letter,) = dead_letters.read(bus)
    assert "cannot apply poison" in letter.reason
    assert Event.from_bytes(letter.value).event_id == "poison"


def test_replay_republishes_once_and_listing_changes_nothing(tmp_path):
    bus = _bus(tmp_path)
    bus.publish(EVENTS_TOPIC, [_event("poison")])
    _recording_worker(bus, [], fail_on={"poison"}).drain()
    assert len(list(dead_letters.read(bus))) == 1
    assert len(list(dead_letters.read(bus))) == 1  # listing twice shows it twice

    assert [d.key for d in dead_letters.replay(bus, dry_run=True)] == ["m-1"]
    assert len(dead_letters.replay(bus)) == 1
    assert dead_letters.replay(bus) == []  # already replayed

    applied: list[str] = []
    _recording_worker(bus, applied).drain()  # the cause is fixed: the replay now applies
    assert applied == ["poison"]


class Outage:
    """A store that cannot be reached for the first `calls` attempts, then answers."""

    def __init__(self, calls: int) -> None:
        self.left = calls

    def check(self) -> None:
        if self.left > 0:
            self.left -= 1
            raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))


def test_an_unreachable_store_pauses_the_worker_and_dead_letters_nothing(tmp_path):
    bus = _bus(tmp_path)
    bus.publish(EVENTS_TOPIC, [_event("e-1"), _event("e-2"), _event("e-3")])
    outage = Outage(calls=12)  # more than every attempt of the batch and of each record
    applied: list[str] = []

    def handle(records):
        outage.check()
        decoded = decode(records)
        applied.extend(e.event_id for e in decoded.events)
        return decoded.dead

    worker = BusWorker(bus, "profiles", [EVENTS_TOPIC], handle, attempts=2, max_backoff_s=0.05)
    worker.drain()

    assert applied == ["e-1", "e-2", "e-3"]
    assert list(dead_letters.read(bus)) == []
    assert worker.transient_failures == 12 and worker.dead_lettered == 0
    assert bus.lag("profiles", EVENTS_TOPIC) == 0


def test_errors_of_the_data_are_not_mistaken_for_an_outage():
    assert transient(OperationalError("SELECT", {}, ConnectionResetError("reset")))
    assert transient(BusError("broker unreachable"))
    assert not transient(IntegrityError("INSERT", {}, ValueError("duplicate key")))
    assert not transient(ValueError("price must be positive"))
