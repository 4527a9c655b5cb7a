"""The embedded bus: a durable, append-only log on the local disk, shared by processes.

Layout under `root`::

    topics/<topic>/meta.json                      {"partitions": N}, fixed at creation
    topics/<topic>/<partition>/<base:020d>.log    the partition's segments, oldest first
    topics/<topic>/<partition>/.lock              held by whoever appends to the partition
    groups/<group>/<topic>.json                   the group's committed offset per partition
    groups/<group>/.lock                          held by the group's one live member

A record on disk is a frame: header `>II` (body length, crc32 of body), then the body
`>qH` (timestamp ms, key length), the utf-8 key and the value. Offsets are record ordinals
per partition, starting at 0; a segment is named by the offset of its first record (its
base), holds consecutive records, and only the newest segment of a partition (the active
one) is ever appended to. A commit stores the offset, and the segment and byte position
where that offset starts, so that a restarted member does not scan for it.

Writers in any process serialise on an exclusive `flock` of the partition's `.lock`. A
writer killed mid-write leaves a torn frame at the tail of the active segment: readers stop
there as if it were not written yet, and the next writer truncates it (under the lock)
before appending. Like Kafka's log recovery, everything from the first invalid frame on is
treated as torn.

Retention, like Kafka's time-based retention by segment: a writer rolls the active segment
(seals it and starts a new one at the next offset) before it would grow past
`segment_bytes`, or once its first record is older than `segment_roll_s` less one sweep
interval. A sealed segment turns read-only, which tells writers and readers in every
process to move on to its successor, and its mtime is set to its newest record's
timestamp; it is deleted once that is older than `retention_s`. Deletion goes from the
oldest segment and stops at the first one to keep, so the records kept are the newest and
their offsets contiguous. A quiet partition's active segment whose records have all
expired is rolled too (the new, empty segment starts at the end offset) and then deleted.
So a record is gone at most `retention_s + segment_roll_s` after it was published, as long
as some process has the bus open and publishes or polls: deletion runs when a bus opens,
then at most every sweep interval, min(segment_roll_s / 2, 60 s), during publish and poll
(a clock read each time; a directory listing and a few stats per partition per sweep).
Records are stamped with the bus's clock when published.

Offsets keep their meaning across deletion: end offsets do not change, and a group whose
committed offset was deleted resumes at the earliest record kept (Kafka's
auto.offset.reset=earliest). A reader keeps reading a segment deleted under it (the open
file stays readable) and then moves on to the next one.

A log directory of the previous layout (one `topics/<topic>/<partition>.log` file per
partition, with commits that name no segment) is migrated in place when a partition is
first opened, under its lock: the file becomes the partition's segment 0, so its offsets
and the committed byte positions stay valid. Stop every process of the previous version
before starting this one on its directory.

Limits, by design of a single-machine log:

* one member per consumer group: the member holds `groups/<group>/.lock`, and a second
  one (in any process) gets BusError instead of a share of the partitions;
* a Consumer is used by one thread; the bus itself is thread-safe;
* a child forked while this process holds a group lock inherits that lock until it exits
  or execs, so start workers with "spawn" or subprocess;
* a copy of the log directory must keep file times (`cp -p`, `rsync -a`): a sealed
  segment's mtime is its newest record's time.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from services.common.bus.base import BusError, Consumer, EventBus, Message, Record, partition_for

__all__ = [
    "DEFAULT_RETENTION_S",
    "DEFAULT_SEGMENT_BYTES",
    "DEFAULT_SEGMENT_ROLL_S",
    "MAX_RECORD_BYTES",
    "LocalLogBus",
    "LocalLogConsumer",
]

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
_SEGMENT_RE = re.compile(r"([0-9]{20})\.log")

DEFAULT_RETENTION_S = 7 * 24 * 3600.0
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_ROLL_S = 3600.0
_MAX_SWEEP_INTERVAL_S = 60.0
_OPEN_ATTEMPTS = 8
_OWNER_WRITE = 0o200
_SEALED_MODE = 0o444

_COMPLETE_INVALID = -1
_INCOMPLETE = 0


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


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


def _seek(fd: int, base: int, offset: int, position: int | None, where: str) -> _Cursor:
    """A cursor at record `offset` of the segment starting at `base`, trusting `position`
    if plausible, else by scanning the segment from its start."""
    if position is not None and _is_frame_boundary(fd, position):
        return _Cursor(fd, position, offset)
    cursor = _Cursor(fd, 0, base)
    while cursor.offset < offset:
        if not cursor.read(min(offset - cursor.offset, _SCAN_BATCH)):
            # The log lost records it had acknowledged to readers (e.g. a machine crash
            # before fsync); resuming from its end beats refusing to start.
            log.warning(
                "%s: committed offset %d is past the log end %d", where, offset, cursor.offset
            )
            break
    return cursor


def _segment_name(base: int) -> str:
    return f"{base:020d}.log"


def _list_segments(directory: Path) -> list[int]:
    """Base offsets of the segments in a partition directory, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for name in names if (m := _SEGMENT_RE.fullmatch(name)))


def _first_timestamp_ms(path: Path) -> int | None:
    """The timestamp in the first frame's header, without reading the whole frame.

    Only a hint: a torn first frame means the segment holds no record, whatever it says.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        head = os.pread(fd, _HEADER.size + _BODY_HEAD.size, 0)
    finally:
        os.close(fd)
    if len(head) < _HEADER.size + _BODY_HEAD.size:
        return None
    timestamp_ms: int = _BODY_HEAD.unpack_from(head, _HEADER.size)[0]
    return timestamp_ms


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
    """This process's append handle on one partition: its lock and its active segment.

    `first_ms` and `max_ms` are the first and the newest timestamp of the active segment,
    known because the writer reads every frame of it, its own and other processes'.
    """

    def __init__(
        self,
        directory: Path,
        old_file: Path,
        fsync: bool,
        segment_bytes: int,
        roll_age_ms: int,
    ) -> None:
        self._dir = directory
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._roll_age_ms = roll_age_ms
        try:
            directory.mkdir()
        except FileExistsError:
            pass
        else:
            if fsync:
                _fsync_dir(directory.parent)
        self._lock_fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        self.fd = -1
        self.base = 0
        self.cursor = _Cursor(-1, 0, 0)
        self.first_ms: int | None = None
        self.max_ms: int | None = None
        try:
            with self._locked():
                if old_file.exists():
                    self._migrate(old_file)
                self._open_newest(0)
        except BaseException:
            self.close()
            raise

    def append(self, frames: bytes, count: int, timestamp_ms: int) -> None:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._truncate_torn_tail(self._follow(locked=True))
            if self._full(len(frames), timestamp_ms):
                self._roll()
            # If this write fails half-way the torn tail is left for the next writer to cut,
            # and any complete frames it did write stay: a retry then duplicates them,
            # which at-least-once consumers tolerate, while cutting them could hide frames
            # a reader has already consumed.
            _write_all(self.fd, frames)
            if self._fsync:
                os.fsync(self.fd)
            self.cursor.appended(len(frames), count)
            self._saw(timestamp_ms)
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def end_offset(self) -> int:
        self._follow(locked=False)
        return self.cursor.offset

    def roll_if_expired(self, cutoff_ms: int) -> bool:
        """Seal the active segment if all its records are older than `cutoff_ms`, so that
        retention can delete it; an empty segment takes its place at the same end offset."""
        with self._locked():
            self._truncate_torn_tail(self._follow(locked=True))
            if self.max_ms is None or self.max_ms >= cutoff_ms:
                return False
            self._roll()
            return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _migrate(self, old_file: Path) -> None:
        """Make a partition file of the one-file layout this partition's segment 0."""
        if _list_segments(self._dir):
            raise BusError(
                f"{old_file} and {self._dir} both hold records: a process of the previous "
                "version is still writing to this log; stop it, then move its records"
            )
        # Offsets and committed byte positions of the old file stay valid in segment 0, and a
        # rename is atomic, so a crash leaves one layout or the other.
        os.rename(old_file, self._dir / _segment_name(0))
        if self._fsync:
            _fsync_dir(self._dir)
            _fsync_dir(old_file.parent)
        log.info("%s: moved into the segmented layout as segment 0", old_file)

    def _open_newest(self, default_base: int) -> None:
        for _ in range(_OPEN_ATTEMPTS):
            bases = _list_segments(self._dir)
            try:
                self._open_segment(bases[-1] if bases else default_base, create=not bases)
                return
            except FileNotFoundError:
                continue  # rolled and deleted between the listing and the open
        raise BusError(f"{self._dir}: the newest segment keeps vanishing")

    def _open_segment(self, base: int, create: bool = False) -> None:
        path = self._dir / _segment_name(base)
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)
        except PermissionError:
            # Sealed (read-only) since it was found: _follow moves on before any write.
            fd = os.open(path, os.O_RDONLY)
        if create and self._fsync:
            _fsync_dir(self._dir)  # the new file's name must survive a crash too
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.base = fd, base
        self.cursor = _Cursor(fd, 0, base)
        self.first_ms = self.max_ms = None

    def _follow(self, locked: bool) -> os.stat_result:
        """Catch up on the active segment and move on to any newer one another process
        rolled; the active segment's stat."""
        while True:
            self._catch_up()
            stat = os.fstat(self.fd)
            if stat.st_nlink == 0:
                # Sealed and deleted by retention since this process last looked.
                self._open_newest(self.cursor.offset)
                continue
            if stat.st_mode & _OWNER_WRITE:
                return stat  # still the active segment
            # Sealed by another process: its successor starts where it ends.
            successor = self.cursor.offset
            if (self._dir / _segment_name(successor)).exists():
                with contextlib.suppress(FileNotFoundError):  # deleted since: look again
                    self._open_segment(successor)
            elif max(_list_segments(self._dir), default=-1) > self.base:
                self._open_newest(successor)  # the successor is sealed and deleted too
            elif locked:
                # Its roller died between sealing it and creating the next one.
                self._open_segment(successor, create=True)
            else:
                return stat  # its roller is about to create the next one

    def _catch_up(self) -> None:
        while pairs := self.cursor.read(_SCAN_BATCH):
            for _, body in pairs:
                self._saw(_BODY_HEAD.unpack_from(body)[0])

    def _saw(self, timestamp_ms: int) -> None:
        if self.first_ms is None:
            self.first_ms = timestamp_ms
        if self.max_ms is None or timestamp_ms > self.max_ms:
            self.max_ms = timestamp_ms

    def _truncate_torn_tail(self, stat: os.stat_result) -> None:
        # Holding the lock means no writer is mid-write, so bytes after the last valid frame
        # are a dead writer's leftovers; appending after them would hide our frames too.
        if stat.st_size > self.cursor.position:
            log.warning(
                "%s: truncating a torn tail at byte %d",
                self._dir / _segment_name(self.base),
                self.cursor.position,
            )
            os.ftruncate(self.fd, self.cursor.position)
            self.cursor.appended(0, 0)

    def _full(self, size: int, timestamp_ms: int) -> bool:
        if self.cursor.position == 0:
            return False
        if self.cursor.position + size > self._segment_bytes:
            return True
        return self.first_ms is not None and timestamp_ms - self.first_ms >= self._roll_age_ms

    def _roll(self) -> None:
        # A sealed segment is never written again: it turns read-only, which tells other
        # writers and readers to move on to its successor, and its mtime carries its newest
        # record's timestamp, all that retention needs to know of it.
        if self.max_ms is not None:
            ns = self.max_ms * 1_000_000
            os.utime(self.fd, ns=(ns, ns))
        os.fchmod(self.fd, _SEALED_MODE)
        if self._fsync:
            os.fsync(self.fd)
        self._open_segment(self.cursor.offset, create=True)


class LocalLogBus(EventBus):
    """EventBus on a local durable log that several processes on one machine share.

    `partitions` applies to topics this bus creates; an existing topic keeps the count in
    its meta.json. `fsync=False` trades crash durability (of publishes, commits and topic
    creation) for speed, e.g. in tests.

    Records are kept for `retention_s`, in segments of at most `segment_bytes` (a larger
    publish gets a segment of its own) that roll at least every `segment_roll_s` (default:
    an hour, or the retention if shorter): a record is deleted at most
    `retention_s + segment_roll_s` after it was published, while the bus is in use (see the
    module docstring). `now_ms` is the clock that stamps records and ages them, in
    milliseconds since the epoch (the wall clock unless a test passes its own).
    """

    def __init__(
        self,
        root: Path,
        partitions: int = 4,
        fsync: bool = True,
        retention_s: float = DEFAULT_RETENTION_S,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        segment_roll_s: float | None = None,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        if partitions < 1:
            raise BusError(f"partitions must be at least 1, not {partitions}")
        if not retention_s > 0:
            raise BusError(f"retention_s must be positive, not {retention_s}")
        if segment_bytes < 1:
            raise BusError(f"segment_bytes must be positive, not {segment_bytes}")
        roll_s = (
            min(DEFAULT_SEGMENT_ROLL_S, retention_s) if segment_roll_s is None else segment_roll_s
        )
        if not roll_s > 0:
            raise BusError(f"segment_roll_s must be positive, not {segment_roll_s}")
        self.root = Path(root)
        self.partitions = partitions
        self.fsync = fsync
        self.retention_s = retention_s
        self.segment_bytes = segment_bytes
        self.segment_roll_s = roll_s
        # Segments roll by age a sweep interval early, so that a record is deleted by the
        # sweep after it is retention + roll interval old at the latest.
        sweep_s = min(roll_s / 2, _MAX_SWEEP_INTERVAL_S)
        self._retention_ms = max(1, round(retention_s * 1000))
        self._roll_age_ms = max(1, round((roll_s - sweep_s) * 1000))
        self._sweep_ms = max(1, round(sweep_s * 1000))
        self._now_ms = now_ms if now_ms is not None else _wall_clock_ms
        self._swept_at_ms: int | None = None
        self._sweep_lock = threading.Lock()
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
        self.delete_expired_if_due()

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
        timestamp_ms = self._now_ms()
        batches = self._frames_by_partition(messages, partitions, timestamp_ms)
        with self._lock:
            self._check_open()
            for partition, frames in batches.items():
                try:
                    self._writer(topic, partition).append(
                        b"".join(frames), len(frames), timestamp_ms
                    )
                except OSError as e:
                    raise BusError(f"cannot append to {topic}/{partition}: {e}") from e
        self.delete_expired_if_due()

    def consumer(self, group: str, topics: Sequence[str]) -> LocalLogConsumer:
        """Join `group` as its only member; BusError if another consumer holds the group."""
        self._check_open()
        consumer = LocalLogConsumer(self, _check_name("group", group), topics)
        with self._lock:
            self._consumers.add(consumer)
        return consumer

    def drop_group(self, group: str) -> None:
        """Remove the folder of a group that never committed (its lock file alone)."""
        group_dir = self.group_dir(_check_name("group", group))
        if group_dir.is_dir() and {p.name for p in group_dir.iterdir()} <= {".lock"}:
            shutil.rmtree(group_dir, ignore_errors=True)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Offset after the last record per partition ({} while the topic does not exist);
        deleting expired records does not change it."""
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

    def groups(self) -> dict[str, list[str]]:
        """A group's folder holds one commit file per topic it committed on (and its lock);
        temporary files start with a dot."""
        if not self._groups_dir.is_dir():
            return {}
        found: dict[str, list[str]] = {}
        for group_dir in sorted(self._groups_dir.iterdir()):
            topics = sorted(p.stem for p in group_dir.glob("[!.]*.json"))
            if topics:
                found[group_dir.name] = topics
        return found

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

    # -- retention --------------------------------------------------------------------------

    def delete_expired(self) -> int:
        """Delete every segment whose records are all older than the retention, now.

        Returns how many segments it deleted. Publishing and polling call it on their own
        (see `delete_expired_if_due`); this is for tools and tests.
        """
        self._check_open()
        cutoff_ms = self._now_ms() - self._retention_ms
        try:
            topics = sorted(os.listdir(self._topics_dir))
        except FileNotFoundError:
            return 0
        deleted = 0
        for topic in topics:
            if not _NAME_RE.fullmatch(topic) or topic in {".", ".."}:
                continue
            try:
                partitions = self.topic_partitions(topic)
            except BusError as e:
                log.warning("retention skips topic %s: %s", topic, e)
                continue
            for partition in range(partitions or 0):
                deleted += self._delete_expired_segments(topic, partition, cutoff_ms)
        return deleted

    def delete_expired_if_due(self) -> None:
        """Run `delete_expired` if the last run (in this process) is a sweep interval old.

        Cheap when not due (a clock read), and never raises: a failed sweep is logged and
        retried at the next interval.
        """
        now_ms = self._now_ms()
        swept = self._swept_at_ms
        # A clock that went back also makes a sweep due, rather than none for that long.
        if self._closed or (swept is not None and swept <= now_ms < swept + self._sweep_ms):
            return
        if not self._sweep_lock.acquire(blocking=False):
            return  # another thread of this process is sweeping
        try:
            self._swept_at_ms = now_ms
            self.delete_expired()
        except (BusError, OSError) as e:
            if not self._closed:
                log.warning("%s: cannot delete expired records yet: %s", self.location(), e)
        finally:
            self._sweep_lock.release()

    def _delete_expired_segments(self, topic: str, partition: int, cutoff_ms: int) -> int:
        directory = self.partition_dir(topic, partition)
        bases = self.segments(topic, partition)
        if not bases:
            return 0
        # The active segment of a busy partition started less than a roll interval ago, so
        # its first timestamp is enough to skip it; only a quiet one needs the writer.
        first_ms = _first_timestamp_ms(directory / _segment_name(bases[-1]))
        if first_ms is not None and first_ms < cutoff_ms:
            with self._lock:
                self._check_open()
                if self._writer(topic, partition).roll_if_expired(cutoff_ms):
                    bases = _list_segments(directory)
        deleted = 0
        # Oldest first, stopping at the first segment to keep, so that the records kept are
        # always the newest ones and their offsets contiguous.
        for base in bases[:-1]:
            path = directory / _segment_name(base)
            try:
                stat = os.stat(path)
                if stat.st_size and stat.st_mtime_ns // 1_000_000 >= cutoff_ms:
                    break
                os.unlink(path)
            except FileNotFoundError:
                continue  # another process deleted it first
            deleted += 1
        if deleted:
            log.info(
                "%s/%d: deleted %d segment(s) older than the retention (%gs)",
                topic,
                partition,
                deleted,
                self.retention_s,
            )
            if self.fsync:
                _fsync_dir(directory)
        return deleted

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

    def partition_dir(self, topic: str, partition: int) -> Path:
        return self._topics_dir / topic / str(partition)

    def segments(self, topic: str, partition: int) -> list[int]:
        """Base offsets of the partition's segments, oldest first ([] before any write);
        a partition of the one-file layout is migrated first."""
        bases = _list_segments(self.partition_dir(topic, partition))
        if bases or not self._old_partition_file(topic, partition).exists():
            return bases
        with self._lock:
            self._check_open()
            self._writer(topic, partition)  # migrates under the partition's lock
        return _list_segments(self.partition_dir(topic, partition))

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

    def _old_partition_file(self, topic: str, partition: int) -> Path:
        return self._topics_dir / topic / f"{partition}.log"

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
        self, messages: Sequence[Message], partitions: int, timestamp_ms: int
    ) -> dict[int, list[bytes]]:
        # Everything is encoded before anything is written, so a bad message fails the
        # batch without appending part of it.
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
            writer = _PartitionWriter(
                self.partition_dir(topic, partition),
                self._old_partition_file(topic, partition),
                self.fsync,
                self.segment_bytes,
                self._roll_age_ms,
            )
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
    """A consumer's read position in one partition, opened once a segment exists."""

    def __init__(
        self, bus: LocalLogBus, topic: str, partition: int, commit: dict[str, int]
    ) -> None:
        self.topic = topic
        self.partition = partition
        self._bus = bus
        self._dir = bus.partition_dir(topic, partition)
        self._where = f"{topic}/{partition}"
        self._offset = int(commit.get("offset", 0))
        position = commit.get("position")
        self._position = None if position is None else int(position)
        # Commits of the one-file layout name no segment: their file became segment 0.
        self._segment = int(commit.get("segment", 0))
        self._cursor: _Cursor | None = None
        self._base = 0
        # The segment after the current one, when a listing showed it (the current one is
        # then sealed); else the successor can only be named by the current one's end.
        self._next_base: int | None = None

    @property
    def offset(self) -> int:
        return self._cursor.offset if self._cursor else self._offset

    def state(self) -> dict[str, int]:
        """What a commit stores: the offset, and its segment and byte position when known."""
        if self._cursor is not None:
            return {
                "offset": self._cursor.offset,
                "segment": self._base,
                "position": self._cursor.position,
            }
        if self._position is None:
            return {"offset": self._offset}
        return {"offset": self._offset, "segment": self._segment, "position": self._position}

    def read(self, limit: int) -> list[Record]:
        if self._cursor is None and not self._open():
            return []
        while True:
            assert self._cursor is not None
            pairs = self._cursor.read(limit)
            if pairs:
                return self._records(pairs)
            successor = self._successor()
            if successor is None:
                return []
            # Every frame of a sealed segment was written before its successor was created,
            # so reading once more after seeing the successor finds the last of them.
            pairs = self._cursor.read(limit)
            if pairs:
                return self._records(pairs)
            if not self._move_to(successor):
                return []

    def close(self) -> None:
        if self._cursor is not None:
            os.close(self._cursor.fd)
            self._cursor = None

    def _records(self, pairs: list[tuple[int, memoryview]]) -> list[Record]:
        return [_decode(self.topic, self.partition, off, body) for off, body in pairs]

    def _open(self) -> bool:
        for _ in range(_OPEN_ATTEMPTS):
            bases = self._bus.segments(self.topic, self.partition)
            if not bases:
                return False
            if self._offset < bases[0]:
                log.warning(
                    "%s: records %d to %d were deleted (retention) before this group read "
                    "them; resuming at %d, the earliest kept",
                    self._where,
                    self._offset,
                    bases[0] - 1,
                    bases[0],
                )
                self._offset, self._position = bases[0], None
            base = bases[bisect.bisect_right(bases, self._offset) - 1]
            try:
                fd = os.open(self._dir / _segment_name(base), os.O_RDONLY)
            except FileNotFoundError:
                continue  # deleted by retention since the listing
            position = self._position if base == self._segment else None
            self._cursor = _seek(fd, base, self._offset, position, self._where)
            self._base, self._next_base = base, self._after(base, bases)
            return True
        return False

    def _successor(self) -> int | None:
        """Base of the segment after the current one, if there is one (then the current
        one is sealed)."""
        assert self._cursor is not None
        if self._next_base is not None:
            return self._next_base
        stat = os.fstat(self._cursor.fd)
        if stat.st_nlink == 0:
            # Retention deleted the current segment, and maybe its successor too.
            self._next_base = self._after(self._base, _list_segments(self._dir))
            return self._next_base
        if stat.st_mode & _OWNER_WRITE:
            return None  # still the active segment
        # Sealed since the listing: its successor starts where it ends, once created.
        expected = self._cursor.offset
        return expected if (self._dir / _segment_name(expected)).exists() else None

    @staticmethod
    def _after(base: int, bases: list[int]) -> int | None:
        later = bisect.bisect_right(bases, base)
        return bases[later] if later < len(bases) else None

    def _move_to(self, base: int) -> bool:
        assert self._cursor is not None
        end = self._cursor.offset
        try:
            fd = os.open(self._dir / _segment_name(base), os.O_RDONLY)
        except FileNotFoundError:
            # Deleted by retention since it was found: start again at the earliest kept.
            self.close()
            self._offset, self._position = base, None
            return self._open()
        os.close(self._cursor.fd)
        if base != end:
            # Records lost in a crash before fsync, as well as deleted ones, leave a gap.
            log.warning(
                "%s: records %d to %d are gone (deleted by retention before this group read "
                "them, or lost in a crash); going on at %d",
                self._where,
                end,
                base - 1,
                base,
            )
        self._cursor = _Cursor(fd, 0, base)
        self._base, self._next_base = base, self._after(base, _list_segments(self._dir))
        return True


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
        self._bus.delete_expired_if_due()
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
