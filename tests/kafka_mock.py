"""A Kafka-protocol broker for tests: librdkafka's mock cluster in a separate process.

No Apache Kafka broker can be installed here, but librdkafka (bundled with confluent-kafka)
has an in-memory mock cluster that speaks the Kafka protocol over TCP on loopback, so
kafka-python clients can produce, fetch, use consumer groups and commit offsets against it.

    python -m tests.kafka_mock      # prints host:port, runs until stdin closes or SIGTERM

    with mock_kafka_cluster() as bootstrap:   # "127.0.0.1:PORT"
        ...

The mock is tuned where librdkafka's mock API allows it (through ctypes on the same
librdkafka that confluent-kafka loaded), so that it behaves like a broker a service would
use rather than like one built to test librdkafka itself:

* consumer groups start at once instead of after a 3 s initial rebalance delay;
* it advertises LeaveGroup only up to v2: it answers v3+ (which kafka-python sends) in the
  v0-v2 layout, so a closing kafka-python consumer could not leave and its group would
  wait for the session timeout before handing its partitions to the next member.

What the mock lacks and the Kafka bus works around: no CreateTopics (topics are
auto-created, with 4 partitions, by a metadata request), no DescribeGroups/ListGroups, and
followers that send SyncGroup after the leader get INVALID_REQUEST, so a group of several
members does not form reliably (one member per group, as the conformance suite uses, does).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 30.0
_RD_KAFKA_PRODUCER = 0
_LEAVE_GROUP = 13


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka has loaded into this process."""
    import confluent_kafka.cimpl  # noqa: F401  (loads librdkafka)

    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            path = line.split()[-1]
            if "librdkafka" in os.path.basename(path):
                lib = ctypes.CDLL(path)
                break
        else:
            raise RuntimeError("librdkafka is not loaded")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_handle_mock_cluster.restype = ctypes.c_void_p
    lib.rd_kafka_handle_mock_cluster.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_set_apiversion.restype = ctypes.c_int
    lib.rd_kafka_mock_set_apiversion.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int16,
        ctypes.c_int16,
        ctypes.c_int16,
    ]
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms.restype = None
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms.argtypes = [ctypes.c_void_p, ctypes.c_int32]
    return lib


def _start_tuned() -> tuple[Any, str]:
    """A mock cluster made like confluent_kafka.Producer({"test.mock.num.brokers": 1})
    makes it, through librdkafka's C API so that the mock can be tuned."""
    lib = _librdkafka()
    errstr = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    for name, value in (("test.mock.num.brokers", "1"), ("log_level", "3")):
        if lib.rd_kafka_conf_set(conf, name.encode(), value.encode(), errstr, len(errstr)) != 0:
            raise RuntimeError(f"librdkafka rejects {name}={value}: {errstr.value.decode()}")
    handle = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
    if not handle:
        raise RuntimeError(f"cannot start the mock cluster: {errstr.value.decode()}")
    cluster = lib.rd_kafka_handle_mock_cluster(handle)
    if not cluster:
        raise RuntimeError("librdkafka made no mock cluster")
    lib.rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0)
    if lib.rd_kafka_mock_set_apiversion(cluster, _LEAVE_GROUP, 0, 2) != 0:
        raise RuntimeError("cannot cap the mock's LeaveGroup version")
    return handle, lib.rd_kafka_mock_cluster_bootstraps(cluster).decode()


def _broker_address(bootstrap: str) -> str:
    """host:port of the broker, as the cluster's metadata names it."""
    import confluent_kafka

    client = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "log_level": 3})
    brokers = list(client.list_topics(timeout=10).brokers.values())
    return f"{brokers[0].host}:{brokers[0].port}"


def serve() -> None:
    """Run the mock cluster, print its address, and exit when stdin closes or on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        keep, bootstrap = _start_tuned()
    except (AttributeError, OSError, RuntimeError) as e:
        # An untuned mock still works, only with slower group joins and restarts.
        import confluent_kafka

        print(f"kafka_mock: cannot tune the mock cluster ({e}); using it as is", file=sys.stderr)
        keep = confluent_kafka.Producer({"test.mock.num.brokers": 1, "log_level": 3})
        brokers = list(keep.list_topics(timeout=10).brokers.values())
        bootstrap = f"{brokers[0].host}:{brokers[0].port}"
    print(_broker_address(bootstrap), flush=True)
    try:
        sys.stdin.read()
    finally:
        # Skip librdkafka's orderly teardown: the cluster only lives in memory.
        del keep
        os._exit(0)


# Points every Kafka test (conformance, crash, fleet) at a real broker instead of the mock.
EXTERNAL_BOOTSTRAP_ENV = "RECOFLEET_TEST_KAFKA_BOOTSTRAP"


def external_bootstrap(given: str | None = None) -> str | None:
    """The real broker to use: `given`, else RECOFLEET_TEST_KAFKA_BOOTSTRAP, else None."""
    return given or os.environ.get(EXTERNAL_BOOTSTRAP_ENV, "").strip() or None


@contextlib.contextmanager
def kafka_cluster(bootstrap: str | None = None) -> Iterator[str]:
    """The broker named (or named by RECOFLEET_TEST_KAFKA_BOOTSTRAP), else the mock."""
    external = external_bootstrap(bootstrap)
    if external:
        yield external
        return
    with mock_kafka_cluster() as started:
        yield started


@contextlib.contextmanager
def mock_kafka_cluster(start_timeout_s: float = START_TIMEOUT_S) -> Iterator[str]:
    """Start a mock Kafka cluster in a child process; yield its bootstrap "host:port"."""
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        try:
            assert proc.stdout is not None
            address = _read_address(proc, start_timeout_s)
            if address is None:
                stderr.seek(0)
                detail = stderr.read().decode(errors="replace").strip()
                raise RuntimeError(f"the mock Kafka cluster did not start: {detail or 'no output'}")
            yield address
        finally:
            _stop(proc)


def _read_address(proc: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 256)
            if not chunk:
                return None
            line += chunk
    address = line.decode().strip()
    return address or None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


if __name__ == "__main__":
    serve()
