"""The embedded bus: a durable, append-only log on the local disk, shared by processes.

Layout under `root`::

    topics/<topic>/meta.json        {"partitions": N}, fixed when the topic is created
    topics/<topic>/<partition>.log  one append-only file of framed records per partition
    groups/<group>/<topic>.json     the group's committed offset (and byte position) per partition
    groups/<group>/.lock            held by the group's one live member

A record on disk is a frame: header `>II` (body length, crc32 of body), then the body
`>qH` (timestamp ms, key length), the utf-8 key and the value. Offsets are record ordinals
per partition, starting at 0.

Writers in any process serialise on an exclusive `flock` of the partition file. A writer
killed mid-write leaves a torn frame at the tail: readers stop there as if it were not
written yet, and the next writer truncates it (under the lock) before appending. Like
Kafka's log recovery, everything from the first invalid frame on is treated as torn.

Limits, by design of a single-machine log:

* one member per consumer group: the member holds `groups/<group>/.lock`, and a second
  one (in any process) gets BusError instead of a share of the partitions;
* a Consumer is used by one thread; the bus itself is thread-safe;
* a child forked while this process holds a group lock inherits that lock until it exits
  or execs, so start workers with "spawn" or subprocess.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from services.common.bus.base import BusError, Consumer, EventBus, Message, Record, partition_for

__all__ = ["MAX_RECORD_BYTES", "LocalLogBus", "LocalLogConsumer"]

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
_BODY_HEAD = struct.Struct(">qH")
_MAX_KEY_BYTES = 0xFFFF
# A garbage length in a torn header must not make readers allocate gigabytes.
MAX_RECORD_BYTES = 32 * 1024 * 1024
_READ_CHUNK = 256 * 1024
_SCAN_BATCH = 4096
_POLL_INTERVAL_S = 0.025
_BOUNDARY_CHECKS = 8
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")

_COMPLETE_INVALID = -1
_INCOMPLETE = 0


def _check_name(kind: str, name: str) -> str:
    # Names become file and directory names, so "." and ".." would escape the layout.
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in {".", ".."}:
        raise BusError(f"invalid {kind} name {name!r}: use [A-Za-z0-9._-]+")
    return name


def _encode(message: Message, timestamp_ms: int) -> bytes:
    key = message.key.encode("utf-8")
    if len(key) > _MAX_KEY_BYTES:
        raise BusError(f"record key is {len(key)} bytes, more than {_MAX_KEY_BYTES}")
    body = _BODY_HEAD.pack(timestamp_ms, len(key)) + key + bytes(message.value)
    if len(body) > MAX_RECORD_BYTES:
        raise BusError(f"record is {len(body)} bytes, more than {MAX_RECORD_BYTES}")
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def _frame_size(buf: bytes, i: int) -> int:
    """Size of the valid frame at buf[i:], _INCOMPLETE, or _COMPLETE_INVALID."""
    if len(buf) - i < _HEADER.size:
        return _INCOMPLETE
    length: int
    crc: int
    length, crc = _HEADER.unpack_from(buf, i)
    # The minimum body length also rejects an all-zero header, whose crc32(b"") would match.
    if not _BODY_HEAD.size <= length <= MAX_RECORD_BYTES:
        return _COMPLETE_INVALID
    start = i + _HEADER.size
    end = start + length
    if end > len(buf):
        return _INCOMPLETE
    body = memoryview(buf)[start:end]
    if zlib.crc32(body) != crc or _BODY_HEAD.unpack_from(body)[1] > length - _BODY_HEAD.size:
        return _COMPLETE_INVALID
    return end - i


def _pending_size(buf: bytes, i: int) -> int:
    """Bytes the frame starting at buf[i:] needs in full (at least a header)."""
    if len(buf) - i < _HEADER.size:
        return _HEADER.size
    length: int = _HEADER.unpack_from(buf, i)[0]
    return _HEADER.size + (length if length <= MAX_RECORD_BYTES else 0)


def _decode(topic: str, partition: int, offset: int, body: memoryview) -> Record:
    timestamp_ms, key_len = _BODY_HEAD.unpack_from(body)
    key_end = _BODY_HEAD.size + key_len
    key = str(body[_BODY_HEAD.size : key_end], "utf-8")
    return Record(topic, partition, offset, key, bytes(body[key_end:]), timestamp_ms)


class _Cursor:
    """Walks the complete frames of one partition file, from a known frame boundary.

    Bytes past the last frame handed out may be stale (a torn tail that a writer has
    since truncated and overwritten), so whenever they do not form a valid frame the
    cursor re-reads them from the file instead of appending newer bytes to them.
    """

    def __init__(self, fd: int, position: int, offset: int) -> None:
        self.fd = fd
        self.position = position
        self.offset = offset
        self._buf = b""
        self._i = 0

    def read(self, limit: int) -> list[tuple[int, memoryview]]:
        """Up to `limit` (offset, body) pairs of complete frames after the cursor."""
        out: list[tuple[int, memoryview]] = []
        fresh = at_end = False
        while len(out) < limit:
            size = _frame_size(self._buf, self._i)
            if size > 0:
                start = self._i + _HEADER.size
                out.append((self.offset, memoryview(self._buf)[start : self._i + size]))
                self._i += size
                self.position += size
                self.offset += 1
            elif fresh and (size == _COMPLETE_INVALID or at_end):
                break
            else:
                at_end = self._refill()
                fresh = True
        return out

    def skip_to_end(self) -> None:
        while self.read(_SCAN_BATCH):
            pass

    def appended(self, size: int, count: int) -> None:
        """Account for frames this process has just written itself, without re-reading."""
        self.position += size
        self.offset += count
        self._buf, self._i = b"", 0

    def _refill(self) -> bool:
        """Re-read from the cursor's position; True when the read reached the end of file."""
        want = max(_READ_CHUNK, _pending_size(self._buf, self._i))
        available = os.fstat(self.fd).st_size - self.position
        self._buf = os.pread(self.fd, min(want, available), self.position) if available > 0 else b""
        self._i = 0
        return len(self._buf) < want


def _is_frame_boundary(fd: int, position: int) -> bool:
    """Cheap plausibility check of a stored position: at the end, or at a valid frame."""
    # A frame being appended right there looks incomplete for a moment; waiting briefly
    # for it avoids a full rescan whenever a caught-up consumer restarts on a busy topic.
    for _ in range(_BOUNDARY_CHECKS):
        size = os.fstat(fd).st_size
        if position == size:
            return True
        if not 0 <= position < size:
            return False
        header = os.pread(fd, _HEADER.size, position)
        need = _pending_size(header, 0) if len(header) == _HEADER.size else _HEADER.size
        frame = header + os.pread(fd, need - len(header), position + len(header))
        found = _frame_size(frame, 0)
        if found != _INCOMPLETE:
            return found > 0
        time.sleep(_POLL_INTERVAL_S)
    return False


def _seek(fd: int, offset: int, position: int | None, where: str) -> _Cursor:
    """A cursor at record `offset`, trusting `position` if plausible, else by scanning."""
    if position is not None and _is_frame_boundary(fd, position):
        return _Cursor(fd, position, offset)
    cursor = _Cursor(fd, 0, 0)
    while cursor.offset < offset:
        if not cursor.read(min(offset - cursor.offset, _SCAN_BATCH)):
            # The log lost records it had acknowledged to readers (e.g. a machine crash
            # before fsync); resuming from its end beats refusing to start.
            log.warning(
                "%s: committed offset %d is past the log end %d", where, offset, cursor.offset
            )
            break
    return cursor


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def _write_temp(path: Path, data: dict[str, Any], fsync: bool) -> Path:
    tmp = _temp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    return tmp


def _write_json_atomic(path: Path, data: dict[str, Any], fsync: bool) -> None:
    """Replace `path` so that readers and crashes see the old or the new file, never half."""
    os.replace(_write_temp(path, data, fsync), path)


def _create_json_once(path: Path, data: dict[str, Any], fsync: bool) -> None:
    """Create `path` unless another process won the race to create it first."""
    tmp = _write_temp(path, data, fsync)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise BusError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise BusError(f"cannot read {path}: not a JSON object")
    return data


def _read_commits(path: Path) -> dict[int, dict[str, int]]:
    """partition -> {"offset": o, "position": p (optional)} from a group's commit file."""
    data = _read_json(path) or {}
    try:
        return {int(p): dict(v) for p, v in data.get("partitions", {}).items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise BusError(f"cannot read {path}: {e}") from e


class _PartitionWriter:
    """This process's append handle on one partition file."""

    def __init__(self, path: Path, fsync: bool) -> None:
        self._path = path
        self._fsync = fsync
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        try:
            self.fd = os.open(path, flags | os.O_EXCL, 0o644)
        except FileExistsError:
            self.fd = os.open(path, flags, 0o644)
        else:
            if fsync:
                _fsync_dir(path.parent)  # the new file's name must survive a crash too
        self.cursor = _Cursor(self.fd, 0, 0)

    def append(self, frames: bytes, count: int) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            self._truncate_torn_tail()
            # If this write fails half-way the torn tail is left for the next writer to cut,
            # and any complete frames it did write stay: a retry then duplicates them,
            # which at-least-once consumers tolerate, while cutting them could hide frames
            # a reader has already consumed.
            _write_all(self.fd, frames)
            if self._fsync:
                os.fsync(self.fd)
            self.cursor.appended(len(frames), count)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def end_offset(self) -> int:
        self.cursor.skip_to_end()
        return self.cursor.offset

    def _truncate_torn_tail(self) -> None:
        # Holding the lock means no writer is mid-write, so bytes after the last valid frame
        # are a dead writer's leftovers; appending after them would hide our frames too.
        self.cursor.skip_to_end()
        if os.fstat(self.fd).st_size > self.cursor.position:
            log.warning("%s: truncating a torn tail at byte %d", self._path, self.cursor.position)
            os.ftruncate(self.fd, self.cursor.position)
            self.cursor.appended(0, 0)

    def close(self) -> None:
        os.close(self.fd)


class LocalLogBus(EventBus):
    """EventBus on a local durable log that several processes on one machine share.

    `partitions` applies to topics this bus creates; an existing topic keeps the count in
    its meta.json. `fsync=False` trades crash durability (of publishes, commits and topic
    creation) for speed, e.g. in tests.
    """

    def __init__(self, root: Path, partitions: int = 4, fsync: bool = True) -> None:
        if partitions < 1:
            raise BusError(f"partitions must be at least 1, not {partitions}")
        self.root = Path(root)
        self.partitions = partitions
        self.fsync = fsync
        self._topics_dir = self.root / "topics"
        self._groups_dir = self.root / "groups"
        self._topics_dir.mkdir(parents=True, exist_ok=True)
        self._groups_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._partition_counts: dict[str, int] = {}
        self._writers: dict[tuple[str, int], _PartitionWriter] = {}
        self._writers_pid = os.getpid()
        self._consumers: set[LocalLogConsumer] = set()
        self._closed = False

    # -- EventBus -------------------------------------------------------------------------

    def ensure_topics(self, topics: Iterable[str]) -> None:
        self._check_open()
        for topic in topics:
            self._ensure_topic(topic)

    def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Append `messages`; each partition's share goes in one write, fsynced before return.

        A failure part-way may leave some partitions written: retrying then duplicates
        those records, which at-least-once consumers already tolerate.
        """
        partitions = self._ensure_topic(topic)
        batches = self._frames_by_partition(messages, partitions)
        with self._lock:
            self._check_open()
            for partition, frames in batches.items():
                try:
                    self._writer(topic, partition).append(b"".join(frames), len(frames))
                except OSError as e:
                    raise BusError(f"cannot append to {topic}/{partition}: {e}") from e

    def consumer(self, group: str, topics: Sequence[str]) -> LocalLogConsumer:
        """Join `group` as its only member; BusError if another consumer holds the group."""
        self._check_open()
        consumer = LocalLogConsumer(self, _check_name("group", group), topics)
        with self._lock:
            self._consumers.add(consumer)
        return consumer

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Complete records per partition ({} while the topic does not exist)."""
        partitions = self.topic_partitions(topic)
        if partitions is None:
            return {}
        with self._lock:
            self._check_open()
            return {p: self._writer(topic, p).end_offset() for p in range(partitions)}

    def committed(self, group: str, topic: str) -> dict[int, int]:
        path = self.commit_path(_check_name("group", group), topic)
        commits = {p: int(c["offset"]) for p, c in _read_commits(path).items()}
        partitions = self.topic_partitions(topic) or 0
        return {p: commits.get(p, 0) for p in range(partitions)} | commits

    def location(self) -> str:
        return f"local log {self.root.resolve()}"

    def healthy(self) -> bool:
        """Open, and the log directory writable on a disk that is not full."""
        if self._closed:
            return False
        try:
            return (
                os.access(self._topics_dir, os.W_OK) and os.statvfs(self._topics_dir).f_bavail > 0
            )
        except OSError:
            return False

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for consumer in list(self._consumers):
                consumer.close()
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()

    # -- for LocalLogConsumer ---------------------------------------------------------------

    def topic_partitions(self, topic: str) -> int | None:
        """The topic's partition count, or None while no process has created it."""
        _check_name("topic", topic)
        with self._lock:
            count = self._partition_counts.get(topic)
        if count is not None:
            return count
        meta = _read_json(self._topics_dir / topic / "meta.json")
        if meta is None:
            return None
        count = meta.get("partitions")
        if not isinstance(count, int) or count < 1:
            raise BusError(f"topic {topic!r} has a bad meta.json: {meta!r}")
        with self._lock:
            self._partition_counts[topic] = count
        return count

    def partition_path(self, topic: str, partition: int) -> Path:
        return self._topics_dir / topic / f"{partition}.log"

    def group_dir(self, group: str) -> Path:
        return self._groups_dir / group

    def commit_path(self, group: str, topic: str) -> Path:
        return self.group_dir(group) / f"{_check_name('topic', topic)}.json"

    def forget(self, consumer: LocalLogConsumer) -> None:
        with self._lock:
            self._consumers.discard(consumer)

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("the bus is closed")

    def _ensure_topic(self, topic: str) -> int:
        count = self.topic_partitions(topic)
        if count is not None:
            return count
        self._check_open()
        topic_dir = self._topics_dir / topic
        topic_dir.mkdir(exist_ok=True)
        # Linking a complete temp file means no process ever reads a half-written meta.json,
        # and racing creators all end up with the first one's partition count.
        _create_json_once(topic_dir / "meta.json", {"partitions": self.partitions}, self.fsync)
        if self.fsync:
            _fsync_dir(topic_dir)
            _fsync_dir(self._topics_dir)
        count = self.topic_partitions(topic)
        if count is None:
            raise BusError(f"topic {topic!r} vanished while being created")
        return count

    def _frames_by_partition(
        self, messages: Sequence[Message], partitions: int
    ) -> dict[int, list[bytes]]:
        # Everything is encoded before anything is written, so a bad message fails the
        # batch without appending part of it.
        timestamp_ms = time.time_ns() // 1_000_000
        batches: dict[int, list[bytes]] = {}
        for message in messages:
            partition = partition_for(message.key, partitions)
            batches.setdefault(partition, []).append(_encode(message, timestamp_ms))
        return batches

    def _writer(self, topic: str, partition: int) -> _PartitionWriter:
        if self._writers_pid != os.getpid():
            self._drop_inherited_writers()
        writer = self._writers.get((topic, partition))
        if writer is None:
            writer = _PartitionWriter(self.partition_path(topic, partition), self.fsync)
            self._writers[(topic, partition)] = writer
        return writer

    def _drop_inherited_writers(self) -> None:
        # A forked child shares its parent's open file descriptions, and with them the
        # parent's flocks, so appending through them would not exclude the parent.
        for writer in self._writers.values():
            writer.close()  # only this process's copy; the parent's lock is untouched
        self._writers.clear()
        self._writers_pid = os.getpid()


class _Tail:
    """A consumer's read position in one partition, opened once the file exists."""

    def __init__(
        self, bus: LocalLogBus, topic: str, partition: int, commit: dict[str, int]
    ) -> None:
        self.topic = topic
        self.partition = partition
        self._path = bus.partition_path(topic, partition)
        self._offset = int(commit.get("offset", 0))
        position = commit.get("position")
        self._position = None if position is None else int(position)
        self._cursor: _Cursor | None = None

    @property
    def offset(self) -> int:
        return self._cursor.offset if self._cursor else self._offset

    def state(self) -> dict[str, int]:
        """What a commit stores: the offset, and its byte position when known."""
        if self._cursor is not None:
            return {"offset": self._cursor.offset, "position": self._cursor.position}
        if self._position is None:
            return {"offset": self._offset}
        return {"offset": self._offset, "position": self._position}

    def read(self, limit: int) -> list[Record]:
        if self._cursor is None and not self._open():
            return []
        assert self._cursor is not None
        pairs = self._cursor.read(limit)
        return [_decode(self.topic, self.partition, off, body) for off, body in pairs]

    def _open(self) -> bool:
        try:
            fd = os.open(self._path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        where = f"{self.topic}/{self.partition}"
        self._cursor = _seek(fd, self._offset, self._position, where)
        return True

    def close(self) -> None:
        if self._cursor is not None:
            os.close(self._cursor.fd)
            self._cursor = None


# Group locks this process holds, only to word the "already in use" error precisely (e.g. a
# drain() in one thread while the group's consumer thread runs).
_HELD_GROUP_LOCKS: set[str] = set()


def _held_here(lock_path: Path) -> bool:
    return str(lock_path.resolve()) in _HELD_GROUP_LOCKS


class LocalLogConsumer(Consumer):
    """The single member of a consumer group on a LocalLogBus.

    Only one consumer per group may be open at a time on the machine (across processes):
    opening a second raises BusError. It reads every partition of its topics, including
    topics and partition files that other processes create after it was opened.
    """

    def __init__(self, bus: LocalLogBus, group: str, topics: Sequence[str]) -> None:
        self._bus = bus
        self._group = group
        self._topics = list(dict.fromkeys(_check_name("topic", t) for t in topics))
        self._tails: dict[str, list[_Tail]] = {}
        self._last_commit: dict[str, dict[str, dict[str, int]]] = {}
        self._turn = 0
        self._lock_fd: int | None = self._lock_group()

    def _lock_group(self) -> int:
        group_dir = self._bus.group_dir(self._group)
        group_dir.mkdir(parents=True, exist_ok=True)
        lock_path = group_dir / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = "this process" if _held_here(lock_path) else "another process"
            raise BusError(
                f"consumer group {self._group!r} is already in use by {holder}"
            ) from None
        _HELD_GROUP_LOCKS.add(str(lock_path.resolve()))
        self._lock_path = lock_path
        return fd

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        deadline = time.monotonic() + timeout_s
        while True:
            records = self._poll_once(max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            time.sleep(min(_POLL_INTERVAL_S, remaining))

    def commit(self) -> None:
        self._check_open()
        fsync = self._bus.fsync
        wrote = False
        for topic, tails in self._tails.items():
            state = {str(t.partition): t.state() for t in tails}
            if state == self._last_commit.get(topic):
                continue
            path = self._bus.commit_path(self._group, topic)
            try:
                _write_json_atomic(path, {"partitions": state}, fsync)
            except OSError as e:
                raise BusError(f"cannot commit {self._group}/{topic}: {e}") from e
            self._last_commit[topic] = state
            wrote = True
        if wrote and fsync:
            _fsync_dir(self._bus.group_dir(self._group))

    def close(self) -> None:
        if self._lock_fd is None:
            return
        for tails in self._tails.values():
            for tail in tails:
                tail.close()
        self._tails.clear()
        _HELD_GROUP_LOCKS.discard(str(self._lock_path.resolve()))
        os.close(self._lock_fd)  # closing the only descriptor releases the flock
        self._lock_fd = None
        self._bus.forget(self)

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise BusError(f"the consumer of group {self._group!r} is closed")

    def _poll_once(self, max_records: int) -> list[Record]:
        self._check_open()
        self._discover_topics()
        tails = [t for topic in self._topics for t in self._tails.get(topic, [])]
        if not tails:
            return []
        # Rotating the starting partition and sharing the budget keeps one busy partition
        # from starving the others.
        self._turn = (self._turn + 1) % len(tails)
        active = tails[self._turn :] + tails[: self._turn]
        records: list[Record] = []
        while active and len(records) < max_records:
            share = max(1, (max_records - len(records)) // len(active))
            still_active = []
            for tail in active:
                limit = min(share, max_records - len(records))
                got = tail.read(limit) if limit > 0 else []
                records.extend(got)
                if got and len(got) == limit:
                    still_active.append(tail)
            active = still_active
        return records

    def _discover_topics(self) -> None:
        for topic in self._topics:
            if topic in self._tails:
                continue
            partitions = self._bus.topic_partitions(topic)
            if partitions is None:
                continue
            commits = _read_commits(self._bus.commit_path(self._group, topic))
            self._tails[topic] = [
                _Tail(self._bus, topic, p, commits.get(p, {})) for p in range(partitions)
            ]
            self._last_commit[topic] = {str(t.partition): t.state() for t in self._tails[topic]}
