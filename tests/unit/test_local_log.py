"""What the local durable log adds to the EventBus contract: files, crashes and processes."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.common.bus.base import BusError, Consumer, Message, Record, partition_for
from services.common.bus.local_log import LocalLogBus

pytestmark = pytest.mark.timeout(120)

TOPIC = "recofleet.events"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "bus"


@pytest.fixture
def bus(root: Path) -> Iterator[LocalLogBus]:
    bus = LocalLogBus(root, partitions=4, fsync=False)
    yield bus
    bus.close()


def _drain(consumer: Consumer, count: int, deadline_s: float = 20.0) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + deadline_s
    while len(records) < count and time.monotonic() < deadline:
        records.extend(consumer.poll(max_records=500, timeout_s=0.2))
    return records


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_new_bus_object_on_the_same_directory_sees_records_and_commits(root: Path) -> None:
    first = LocalLogBus(root, partitions=3)
    first.publish(TOPIC, [Message(f"m{i}", b"v%d" % i) for i in range(30)])
    with first.consumer("profiles", [TOPIC]) as consumer:
        assert len(_drain(consumer, 30)) == 30
        consumer.commit()
    first.close()

    again = LocalLogBus(root, partitions=8)  # an existing topic keeps its partition count
    try:
        assert set(again.end_offsets(TOPIC)) == {0, 1, 2}
        assert sum(again.end_offsets(TOPIC).values()) == 30
        assert again.lag("profiles", TOPIC) == 0
        with again.consumer("retrieval", [TOPIC]) as consumer:
            assert sorted(r.key for r in _drain(consumer, 30)) == sorted(f"m{i}" for i in range(30))
    finally:
        again.close()


def _segment(root: Path, partition: int, base: int = 0, topic: str = TOPIC) -> Path:
    return root / "topics" / topic / str(partition) / f"{base:020d}.log"


def _valid_frame(bus: LocalLogBus, key: str, root: Path) -> bytes:
    """The bytes one publish of `key` appends, taken from a scratch bus."""
    scratch = LocalLogBus(root.parent / "scratch", partitions=4, fsync=False)
    scratch.publish(TOPIC, [Message(key, b"x" * 50)])
    scratch.close()
    return _segment(root.parent / "scratch", partition_for(key, 4)).read_bytes()


TORN_TAILS: dict[str, Callable[[bytes], bytes]] = {
    "partial frame": lambda frame: frame[: len(frame) // 2],
    "header only": lambda frame: frame[:8],
    "bad checksum": lambda frame: frame[:-1] + bytes([frame[-1] ^ 0xFF]),
    "zeros": lambda frame: b"\0" * len(frame),
    "garbage": lambda frame: b"\xff" * 3,
}


@pytest.mark.parametrize("tail", sorted(TORN_TAILS))
def test_a_torn_tail_is_not_delivered_and_the_next_publish_cuts_it(
    bus: LocalLogBus, root: Path, tail: str
) -> None:
    key = "member-1"
    bus.publish(TOPIC, [Message(key, b"before")])
    path = _segment(root, partition_for(key, 4))
    good_size = path.stat().st_size
    with path.open("ab") as f:
        f.write(TORN_TAILS[tail](_valid_frame(bus, key, root)))

    with bus.consumer("profiles", [TOPIC]) as consumer:
        assert [r.value for r in _drain(consumer, 1)] == [b"before"]
        assert consumer.poll(timeout_s=0.1) == []
        assert sum(bus.end_offsets(TOPIC).values()) == 1

        other_process_bus = LocalLogBus(root, fsync=False)
        other_process_bus.publish(TOPIC, [Message(key, b"after")])
        other_process_bus.close()

        after = consumer.poll(timeout_s=2.0)
        assert [(r.offset, r.value) for r in after] == [(1, b"after")]

    assert path.stat().st_size == good_size + good_size - len(b"before") + len(b"after")
    assert sum(bus.end_offsets(TOPIC).values()) == 2
    with bus.consumer("fresh", [TOPIC]) as consumer:
        assert [r.value for r in _drain(consumer, 2)] == [b"before", b"after"]


def test_a_second_member_of_a_group_in_another_process_is_refused(
    bus: LocalLogBus, root: Path
) -> None:
    code = """
        import sys
        from pathlib import Path
        from services.common.bus.base import BusError
        from services.common.bus.local_log import LocalLogBus
        bus = LocalLogBus(Path(sys.argv[1]), fsync=False)
        try:
            bus.consumer("profiles", ["recofleet.events"]).close()
        except BusError as e:
            print("BusError:", e)
        else:
            print("joined")
        """
    consumer = bus.consumer("profiles", [TOPIC])
    refused = _run_python(code, str(root))
    consumer.close()
    joined = _run_python(code, str(root))

    assert refused.stdout.strip() == (
        "BusError: consumer group 'profiles' is already in use by another process"
    ), refused.stderr
    assert joined.stdout.strip() == "joined", joined.stderr


def test_a_second_member_of_a_group_in_the_same_process_is_refused(bus: LocalLogBus) -> None:
    with bus.consumer("profiles", [TOPIC]), pytest.raises(BusError, match="in use by this process"):
        bus.consumer("profiles", [TOPIC])
    bus.consumer("profiles", [TOPIC]).close()


PUBLISHER = """
    import sys
    from pathlib import Path
    from services.common.bus.base import Message
    from services.common.bus.local_log import LocalLogBus
    root, name, count, batch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    bus = LocalLogBus(root, fsync=False)
    print("ready", flush=True)
    sys.stdin.readline()
    for start in range(0, count, batch):
        bus.publish("recofleet.events", [
            Message(f"member-{i % 37}", f"{name}:{i}:".encode() + b"p" * 250)
            for i in range(start, min(start + batch, count))
        ])
    bus.close()
    """


def test_concurrent_publishers_in_two_processes_lose_nothing(bus: LocalLogBus, root: Path) -> None:
    count = 2000
    bus.ensure_topics([TOPIC])
    consumer = bus.consumer("profiles", [TOPIC])  # opened before anything is published
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PUBLISHER), str(root), name, str(count), "20"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for writer in writers:  # start both at once so their appends interleave
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
    got = _drain(consumer, 2 * count)
    assert [writer.wait(timeout=60) for writer in writers] == [0, 0]
    assert consumer.poll(timeout_s=0.2) == []
    consumer.close()

    assert len(got) == 2 * count
    seen: dict[tuple[str, str], list[int]] = {}
    for record in got:
        name, seq, padding = record.value.decode().split(":")
        assert padding == "p" * 250 and record.key == f"member-{int(seq) % 37}"
        seen.setdefault((name, record.key), []).append(int(seq))
    assert sorted(s for (name, _), seqs in seen.items() if name == "a" for s in seqs) == list(
        range(count)
    )
    assert all(seqs == sorted(seqs) for seqs in seen.values())
    assert sum(bus.end_offsets(TOPIC).values()) == 2 * count


def _publish_many(bus: LocalLogBus, name: str, count: int) -> None:
    for start in range(0, count, 20):
        bus.publish(
            TOPIC,
            [Message(f"member-{i % 37}", f"{name}:{i}".encode()) for i in range(start, start + 20)],
        )


def test_a_forked_child_publishing_through_the_parents_bus_loses_nothing(
    bus: LocalLogBus,
) -> None:
    count = 2000
    _publish_many(bus, "warmup", 20)  # the parent now holds open partition files
    child = multiprocessing.get_context("fork").Process(
        target=_publish_many, args=(bus, "child", count)
    )
    child.start()
    _publish_many(bus, "parent", count)
    child.join(timeout=60)
    assert child.exitcode == 0

    assert sum(bus.end_offsets(TOPIC).values()) == 2 * count + 20
    with bus.consumer("profiles", [TOPIC]) as consumer:
        values = [r.value.decode() for r in _drain(consumer, 2 * count + 20)]
    for name in ("parent", "child"):
        assert sorted(int(v.split(":")[1]) for v in values if v.startswith(name)) == list(
            range(count)
        )


def test_a_consumer_sees_a_topic_created_after_it_opened(bus: LocalLogBus, root: Path) -> None:
    with bus.consumer("campaigns", ["late.topic"]) as consumer:
        assert consumer.poll(timeout_s=0.1) == []
        publisher = LocalLogBus(root, partitions=2, fsync=False)
        publisher.publish("late.topic", [Message("k", b"v")])
        publisher.close()
        assert [r.value for r in _drain(consumer, 1)] == [b"v"]


def test_poll_does_not_starve_a_quiet_partition(bus: LocalLogBus) -> None:
    busy, quiet = "member-1", "member-2"
    assert partition_for(busy, 4) != partition_for(quiet, 4)
    bus.publish(TOPIC, [Message(busy, b"%d" % i) for i in range(1000)])
    bus.publish(TOPIC, [Message(quiet, b"q")])

    with bus.consumer("profiles", [TOPIC]) as consumer:
        assert quiet in {r.key for r in consumer.poll(max_records=10)}


def test_resuming_falls_back_to_scanning_without_a_trusted_position(
    bus: LocalLogBus, root: Path
) -> None:
    key = "member-1"
    partition = partition_for(key, 4)
    bus.publish(TOPIC, [Message(key, b"%d" % i) for i in range(10)])
    with bus.consumer("profiles", [TOPIC]) as consumer:
        assert len(_drain(consumer, 10)) == 10
    commit_file = root / "groups" / "profiles" / f"{TOPIC}.json"

    for stored in ({"offset": 6}, {"offset": 6, "position": 7}, {"offset": 6, "position": 10**9}):
        commit_file.write_text(json.dumps({"partitions": {str(partition): stored}}))
        with bus.consumer("profiles", [TOPIC]) as consumer:
            assert [r.value for r in _drain(consumer, 4)] == [b"6", b"7", b"8", b"9"]


def test_commit_stores_offsets_with_byte_positions(bus: LocalLogBus, root: Path) -> None:
    bus.publish(TOPIC, [Message("member-1", b"v")])
    with bus.consumer("profiles", [TOPIC]) as consumer:
        _drain(consumer, 1)
        consumer.commit()

    stored = json.loads((root / "groups" / "profiles" / f"{TOPIC}.json").read_text())
    partition = str(partition_for("member-1", 4))
    assert stored["partitions"][partition]["offset"] == 1
    assert stored["partitions"][partition]["position"] > 0
    assert bus.committed("profiles", TOPIC)[int(partition)] == 1


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "with space", "ünï", "a\nb"])
def test_invalid_topic_and_group_names_raise_bus_error(bus: LocalLogBus, name: str) -> None:
    with pytest.raises(BusError):
        bus.publish(name, [Message("k", b"v")])
    with pytest.raises(BusError):
        bus.ensure_topics([name])
    with pytest.raises(BusError):
        bus.consumer("profiles", [name])
    with pytest.raises(BusError):
        bus.consumer(name, [TOPIC])


def test_healthy_until_closed(bus: LocalLogBus) -> None:
    assert bus.healthy()
    bus.close()
    assert not bus.healthy()


def test_a_closed_bus_refuses_work_and_releases_its_consumers(root: Path) -> None:
    bus = LocalLogBus(root, fsync=False)
    bus.consumer("profiles", [TOPIC])
    bus.close()
    with pytest.raises(BusError):
        bus.publish(TOPIC, [Message("k", b"v")])

    other = LocalLogBus(root, fsync=False)
    other.consumer("profiles", [TOPIC]).close()
    other.close()
