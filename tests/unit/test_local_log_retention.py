"""The local log keeps records only for its retention: segments, deletion, the old layout.

Time is a fake clock the bus stamps records with and ages them by, so that a week of
retention is a few lines; only the test with a publisher in another process uses real time.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.bus import open_bus
from services.common.bus.base import BusError, Consumer, Message, Record, partition_for
from services.common.bus.local_log import LocalLogBus
from services.common.settings import FleetSettings

pytestmark = pytest.mark.timeout(120)

TOPIC = "recofleet.events"
RETENTION_S = 10.0
ROLL_S = 2.0


class FakeClock:
    """Milliseconds since the epoch, moved on by the test."""

    def __init__(self) -> None:
        self.ms = 1_750_000_000_000

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "bus"


def _bus(root: Path, clock: FakeClock, **options: object) -> LocalLogBus:
    settings: dict[str, object] = {
        "partitions": 1,
        "fsync": False,
        "retention_s": RETENTION_S,
        "segment_roll_s": ROLL_S,
        "now_ms": clock,
    }
    return LocalLogBus(root, **(settings | options))  # type: ignore[arg-type]


@pytest.fixture
def bus(root: Path, clock: FakeClock) -> Iterator[LocalLogBus]:
    bus = _bus(root, clock)
    yield bus
    bus.close()


def _drain(consumer: Consumer, deadline_s: float = 10.0) -> list[Record]:
    """Everything the consumer gets until a poll comes back empty."""
    records: list[Record] = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        got = consumer.poll(max_records=500, timeout_s=0.05)
        if not got:
            break
        records.extend(got)
    return records


def _on_disk(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _segments(root: Path, partition: int = 0, topic: str = TOPIC) -> list[int]:
    return sorted(int(p.stem) for p in (root / "topics" / topic / str(partition)).glob("*.log"))


def _publish(bus: LocalLogBus, key: str, count: int, start: int = 0) -> None:
    bus.publish(TOPIC, [Message(key, f"{key}:{i}".encode()) for i in range(start, start + count)])


def test_records_past_the_retention_are_deleted_from_disk_as_consumers_poll(
    bus: LocalLogBus, root: Path, clock: FakeClock
) -> None:
    _publish(bus, "gone-member", 5)
    clock.advance(ROLL_S)  # the next publish starts a new segment
    _publish(bus, "kept-member", 5)
    assert _segments(root) == [0, 5]

    clock.advance(RETENTION_S - ROLL_S / 2)  # gone-member's records are past the retention
    assert b"gone-member" in _on_disk(root)
    with bus.consumer("profiles", [TOPIC]) as consumer:
        records = _drain(consumer)

    # The poll itself deleted the expired segment, before reading from the log's start.
    assert b"gone-member" not in _on_disk(root)
    assert b"kept-member" in _on_disk(root)
    assert [(r.offset, r.value) for r in records] == [
        (5 + i, b"kept-member:%d" % i) for i in range(5)
    ]
    assert bus.end_offsets(TOPIC) == {0: 10}


def test_a_record_is_kept_for_the_retention_and_gone_one_roll_interval_later(
    bus: LocalLogBus, root: Path, clock: FakeClock
) -> None:
    published_at = clock.ms
    bus.publish(TOPIC, [Message("first-member", b"first")])
    ages = []
    while clock.ms - published_at <= (RETENTION_S + ROLL_S) * 1000:
        clock.advance(0.25)
        bus.publish(TOPIC, [Message("busy-member", b"tick")])
        age_s = (clock.ms - published_at) / 1000
        ages.append((age_s, b"first-member" in _on_disk(root)))

    assert all(kept for age_s, kept in ages if age_s <= RETENTION_S)
    assert not any(kept for age_s, kept in ages if age_s >= RETENTION_S + ROLL_S)


def test_a_quiet_partition_loses_its_last_records_too_and_keeps_its_offsets(
    root: Path, clock: FakeClock
) -> None:
    quiet, busy = "quiet-member", "loud-member"
    assert partition_for(quiet, 2) != partition_for(busy, 2)
    publisher = _bus(root, clock, partitions=2)
    bus = _bus(root, clock, partitions=2)
    try:
        bus.publish(TOPIC, [Message(quiet, b"q%d" % i) for i in range(3)])
        clock.advance(RETENTION_S + 1)
        publisher.publish(TOPIC, [Message(busy, b"b")])  # another process publishes elsewhere

        assert b"quiet-member" not in _on_disk(root)
        assert bus.end_offsets(TOPIC)[partition_for(quiet, 2)] == 3
        bus.publish(TOPIC, [Message(quiet, b"later")])
        with bus.consumer("profiles", [TOPIC]) as consumer:
            records = _drain(consumer)
        assert sorted((r.key, r.offset, r.value) for r in records) == [
            (busy, 0, b"b"),
            (quiet, 3, b"later"),
        ]
    finally:
        publisher.close()
        bus.close()


def test_opening_the_bus_deletes_what_expired_while_no_process_ran(
    root: Path, clock: FakeClock
) -> None:
    bus = _bus(root, clock)
    _publish(bus, "gone-member", 3)
    bus.close()

    clock.advance(RETENTION_S + ROLL_S)
    reopened = _bus(root, clock)
    try:
        assert b"gone-member" not in _on_disk(root)
        assert reopened.end_offsets(TOPIC) == {0: 3}
    finally:
        reopened.close()


def test_a_group_whose_committed_offset_was_deleted_resumes_at_the_earliest_kept_record(
    bus: LocalLogBus, clock: FakeClock
) -> None:
    _publish(bus, "old-member", 5)
    with bus.consumer("profiles", [TOPIC]) as consumer:
        assert len(consumer.poll(max_records=2)) == 2
        consumer.commit()
    clock.advance(ROLL_S)
    _publish(bus, "new-member", 5)
    clock.advance(RETENTION_S - ROLL_S / 2)
    assert bus.delete_expired() == 1

    assert bus.committed("profiles", TOPIC) == {0: 2}
    assert bus.lag("profiles", TOPIC) == 8  # published and never committed, kept or not
    with bus.consumer("profiles", [TOPIC]) as consumer:
        records = _drain(consumer)
        consumer.commit()
    assert [(r.offset, r.value) for r in records] == [
        (5 + i, b"new-member:%d" % i) for i in range(5)
    ]
    assert bus.committed("profiles", TOPIC) == {0: 10}
    assert bus.lag("profiles", TOPIC) == 0


def test_kept_records_keep_their_offsets_and_a_caught_up_group_notices_nothing(
    bus: LocalLogBus, clock: FakeClock
) -> None:
    before: list[Record] = []
    with bus.consumer("profiles", [TOPIC]) as caught_up:
        for round_ in range(6):
            _publish(bus, f"member-{round_}", 4)
            before.extend(_drain(caught_up))
            caught_up.commit()
            clock.advance(ROLL_S)
        deleted = bus.delete_expired()
        _publish(bus, "member-last", 2)
        after = _drain(caught_up)

    assert deleted > 0
    assert [r.offset for r in before] == list(range(24))
    assert [(r.offset, r.value) for r in after] == [(24, b"member-last:0"), (25, b"member-last:1")]
    with bus.consumer("fresh", [TOPIC]) as fresh:
        kept = _drain(fresh)
    assert kept[0].offset > 0
    by_offset = {r.offset: (r.key, r.value) for r in before + after}
    assert [(r.key, r.value) for r in kept] == [by_offset[r.offset] for r in kept]
    assert [r.offset for r in kept] == list(range(kept[0].offset, 26))
    assert bus.end_offsets(TOPIC) == {0: 26}


def test_segments_roll_by_size_and_are_named_by_their_first_offset(
    root: Path, clock: FakeClock
) -> None:
    bus = _bus(root, clock, segment_bytes=1000, fsync=True)
    try:
        for _ in range(20):
            bus.publish(TOPIC, [Message("member-1", b"x" * 200)])
        with bus.consumer("profiles", [TOPIC]) as consumer:
            offsets = [r.offset for r in _drain(consumer)]
    finally:
        bus.close()

    bases = _segments(root)
    assert offsets == list(range(20))
    assert len(bases) > 4 and bases[0] == 0
    sizes = [(root / "topics" / TOPIC / "0" / f"{base:020d}.log").stat().st_size for base in bases]
    assert all(size <= 1000 for size in sizes)
    # Each segment holds the records from its name up to the next segment's name.
    frame = sizes[-1] // (20 - bases[-1])
    counts = [end - base for base, end in zip(bases, [*bases[1:], 20], strict=True)]
    assert [size // frame for size in sizes] == counts


def test_a_torn_tail_is_cut_before_its_segment_is_sealed(root: Path, clock: FakeClock) -> None:
    bus = _bus(root, clock, segment_bytes=1000)
    try:
        for i in range(4):
            bus.publish(TOPIC, [Message("member-1", b"%d" % i + b"x" * 199)])
        active = root / "topics" / TOPIC / "0" / f"{0:020d}.log"
        good = active.read_bytes()
        with active.open("ab") as f:  # a writer died half-way through a frame
            f.write(good[: len(good) // 8])
        bus.publish(TOPIC, [Message("member-1", b"4" + b"x" * 199)])  # does not fit: rolls
        with bus.consumer("profiles", [TOPIC]) as consumer:
            records = _drain(consumer)
    finally:
        bus.close()

    assert _segments(root) == [0, 4]
    assert active.read_bytes() == good
    assert [(r.offset, r.value[:1]) for r in records] == [(i, b"%d" % i) for i in range(5)]


def test_a_reader_inside_a_segment_that_retention_deletes_moves_on(
    root: Path, clock: FakeClock
) -> None:
    writer = _bus(root, clock, segment_bytes=100)
    reader = _bus(root, clock, segment_bytes=100)  # another process, same clock
    try:
        for i in range(12):
            writer.publish(TOPIC, [Message("old-member", b"old-member:%d" % i)])
        assert len(_segments(root)) > 2
        consumer = reader.consumer("profiles", [TOPIC])
        first = consumer.poll(max_records=1)  # its open file is the first segment

        clock.advance(RETENTION_S + ROLL_S)
        _publish(writer, "new-member", 3)  # rolls, then deletes every old segment
        assert _segments(root) == [12]
        rest = _drain(consumer)
        consumer.close()
    finally:
        writer.close()
        reader.close()

    offsets = [r.offset for r in first + rest]
    assert offsets[0] == 0
    assert offsets == sorted(set(offsets))
    assert [(r.offset, r.value) for r in rest[-3:]] == [
        (12 + i, b"new-member:%d" % i) for i in range(3)
    ]


READER_RACE_PUBLISHER = """
    import sys, time
    from pathlib import Path
    from services.common.bus.base import Message
    from services.common.bus.local_log import LocalLogBus
    bus = LocalLogBus(Path(sys.argv[1]), partitions=1, fsync=False, retention_s=2.0,
                      segment_bytes=4096, segment_roll_s=0.5)
    for start in range(0, 3000, 10):
        bus.publish("recofleet.events", [
            Message("member-1", b"%d:" % i + b"p" * 100) for i in range(start, start + 10)
        ])
        time.sleep(0.005)
    bus.close()
    """


def test_readers_keep_going_while_another_process_rolls_and_deletes_under_them(
    root: Path,
) -> None:
    bus = LocalLogBus(root, partitions=1, fsync=False, retention_s=2.0, segment_roll_s=0.5)
    bus.ensure_topics([TOPIC])
    consumers = {"fast": bus.consumer("fast", [TOPIC]), "slow": bus.consumer("slow", [TOPIC])}
    batch = {"fast": 500, "slow": 2}  # the slow one falls behind the retention
    publisher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(READER_RACE_PUBLISHER), str(root)],
        stderr=subprocess.PIPE,
        text=True,
    )
    got: dict[str, list[Record]] = {name: [] for name in consumers}
    caught_up: set[str] = set()
    deadline = time.monotonic() + 60
    while len(caught_up) < 2 and time.monotonic() < deadline:
        done = publisher.poll() is not None
        for name, consumer in consumers.items():
            got[name].extend(consumer.poll(max_records=batch[name], timeout_s=0))
            consumer.commit()
            if done and bus.committed(name, TOPIC) == bus.end_offsets(TOPIC) == {0: 3000}:
                caught_up.add(name)
        time.sleep(0.01)
    _, stderr = publisher.communicate(timeout=30)
    assert publisher.returncode == 0, stderr
    for consumer in consumers.values():
        consumer.close()

    assert caught_up == {"fast", "slow"}
    for name, records in got.items():
        offsets = [r.offset for r in records]
        assert offsets == sorted(set(offsets)), name
        # Whatever a reader got is the record published at that offset, never a stale one.
        assert all(r.value.split(b":")[0] == b"%d" % r.offset for r in records), name
    assert 0 < len(got["slow"]) < 3000
    time.sleep(2.6)  # everything is past retention + roll interval
    bus.delete_expired()
    assert _segments(root) == [3000]
    assert b"p" * 100 not in _on_disk(root)
    bus.close()


TWO_PUBLISHERS = """
    import sys
    from pathlib import Path
    from services.common.bus.base import Message
    from services.common.bus.local_log import LocalLogBus
    root, name = Path(sys.argv[1]), sys.argv[2]
    bus = LocalLogBus(root, partitions=2, fsync=False, segment_bytes=2048)
    print("ready", flush=True)
    sys.stdin.readline()
    for start in range(0, 1500, 5):
        bus.publish("recofleet.events", [
            Message(f"member-{i % 7}", f"{name}:{i}:".encode() + b"p" * 60)
            for i in range(start, start + 5)
        ])
    bus.close()
    """


def test_two_processes_rolling_the_same_partitions_lose_nothing(root: Path) -> None:
    bus = LocalLogBus(root, partitions=2, fsync=False, segment_bytes=2048)
    bus.ensure_topics([TOPIC])
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(TWO_PUBLISHERS), str(root), name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for writer in writers:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]

    with bus.consumer("profiles", [TOPIC]) as consumer:
        records = _drain(consumer)
    bus.close()
    assert len(records) == 3000
    for partition in (0, 1):
        offsets = [r.offset for r in records if r.partition == partition]
        assert offsets == list(range(len(offsets)))
        bases = _segments(root, partition)
        assert len(bases) > 10
        assert set(bases) <= set(offsets)
    for name in ("a", "b"):
        seqs = sorted(
            int(r.value.split(b":")[1])
            for r in records
            if r.value.startswith(b"%s:" % name.encode())
        )
        assert seqs == list(range(1500))


def _old_frame(key: str, value: bytes, timestamp_ms: int) -> bytes:
    """A record in the frame format of the module docstring, built by hand."""
    key_bytes = key.encode()
    body = struct.pack(">qH", timestamp_ms, len(key_bytes)) + key_bytes + value
    return struct.pack(">II", len(body), zlib.crc32(body)) + body


def _write_old_layout(root: Path, topic: str, partitions: dict[int, list[bytes]]) -> None:
    """A log directory as the one-file-per-partition layout left it."""
    topic_dir = root / "topics" / topic
    topic_dir.mkdir(parents=True)
    (topic_dir / "meta.json").write_text(json.dumps({"partitions": len(partitions)}))
    for partition, frames in partitions.items():
        (topic_dir / f"{partition}.log").write_bytes(b"".join(frames))


def test_a_log_directory_of_the_one_file_layout_is_read_and_appended_to(
    root: Path, clock: FakeClock
) -> None:
    frames = {
        0: [_old_frame("member-a", b"a%d" % i, clock.ms - 1000) for i in range(3)],
        1: [_old_frame("member-b", b"b%d" % i, clock.ms - 1000) for i in range(2)],
    }
    _write_old_layout(root, TOPIC, frames)
    group_dir = root / "groups" / "profiles"
    group_dir.mkdir(parents=True)
    old_commit = {"0": {"offset": 1, "position": len(frames[0][0])}, "1": {"offset": 2}}
    (group_dir / f"{TOPIC}.json").write_text(json.dumps({"partitions": old_commit}))

    bus = _bus(root, clock, partitions=4)
    try:
        assert bus.end_offsets(TOPIC) == {0: 3, 1: 2}
        with bus.consumer("profiles", [TOPIC]) as consumer:
            resumed = [(r.partition, r.offset, r.value) for r in _drain(consumer)]
        assert resumed == [(0, 1, b"a1"), (0, 2, b"a2")]

        bus.publish(TOPIC, [Message("member-a", b"new")])
        assert bus.end_offsets(TOPIC) == {0: 4, 1: 2}
        with bus.consumer("fresh", [TOPIC]) as consumer:
            everything = sorted((r.partition, r.offset, r.value) for r in _drain(consumer))
        assert everything == [
            (0, 0, b"a0"),
            (0, 1, b"a1"),
            (0, 2, b"a2"),
            (0, 3, b"new"),
            (1, 0, b"b0"),
            (1, 1, b"b1"),
        ]
    finally:
        bus.close()
    topic_dir = root / "topics" / TOPIC
    assert not list(topic_dir.glob("*.log"))
    assert (topic_dir / "0" / f"{0:020d}.log").read_bytes().startswith(b"".join(frames[0]))


def test_records_of_the_one_file_layout_past_the_retention_are_deleted_at_open(
    root: Path, clock: FakeClock
) -> None:
    week_old = clock.ms - 7 * 24 * 3600 * 1000
    _write_old_layout(root, TOPIC, {0: [_old_frame("old-member", b"v", week_old)] * 3})

    bus = _bus(root, clock)
    try:
        assert b"old-member" not in _on_disk(root)
        assert bus.end_offsets(TOPIC) == {0: 3}
        bus.publish(TOPIC, [Message("new-member", b"v")])
        with bus.consumer("profiles", [TOPIC]) as consumer:
            assert [(r.offset, r.key) for r in _drain(consumer)] == [(3, "new-member")]
    finally:
        bus.close()


def test_records_carry_the_bus_clock_and_commits_name_their_segment(
    root: Path, clock: FakeClock
) -> None:
    bus = _bus(root, clock, segment_bytes=100)
    try:
        for _ in range(3):
            bus.publish(TOPIC, [Message("member-1", b"x" * 60)])
        with bus.consumer("profiles", [TOPIC]) as consumer:
            records = _drain(consumer)
            consumer.commit()
        stored = json.loads((root / "groups" / "profiles" / f"{TOPIC}.json").read_text())
        bus.publish(TOPIC, [Message("member-1", b"after")])
        with bus.consumer("profiles", [TOPIC]) as consumer:
            resumed = _drain(consumer)
    finally:
        bus.close()
    assert {r.timestamp_ms for r in records} == {clock.ms}
    assert stored["partitions"]["0"]["offset"] == 3
    assert stored["partitions"]["0"]["segment"] == 2
    assert [(r.offset, r.value) for r in resumed] == [(3, b"after")]


@pytest.mark.parametrize(
    "options",
    [{"retention_s": 0}, {"retention_s": -1.0}, {"segment_bytes": 0}, {"segment_roll_s": 0}],
)
def test_nonsense_retention_options_raise_bus_error(root: Path, options: dict[str, float]) -> None:
    with pytest.raises(BusError):
        LocalLogBus(root, **options)  # type: ignore[arg-type]


def test_open_bus_keeps_records_for_the_fleet_retention(tmp_path: Path) -> None:
    fleet = FleetSettings(data_dir=tmp_path, bus_retention_hours=2)
    bus = open_bus(fleet)
    try:
        assert isinstance(bus, LocalLogBus)
        assert (bus.retention_s, bus.segment_roll_s) == (2 * 3600, 3600)
    finally:
        bus.close()


def test_open_bus_deletes_records_before_the_stores_forget_their_event_ids(
    tmp_path: Path,
) -> None:
    # A record may outlive the retention by a roll interval: it must not outlive its id.
    fleet = FleetSettings(data_dir=tmp_path, bus_retention_hours=2, processed_retention_hours=2.25)
    bus = open_bus(fleet)
    try:
        assert isinstance(bus, LocalLogBus)
        assert bus.retention_s + bus.segment_roll_s <= fleet.processed_retention_hours * 3600
    finally:
        bus.close()
