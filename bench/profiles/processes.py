"""The stores, processes and readings of bench.profiles: what the run starts and watches."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text

from bench.fleet import BenchFailed, free_port, say
from services.profiles.server import SERVICE_NAME

ROOT = Path(__file__).resolve().parents[2]

# --- the stores --------------------------------------------------------------------------


@dataclass
class Store:
    kind: str
    url: str
    version: str
    location: str  # the SQLite directory or the PostgreSQL schema, to find it again
    disk: Callable[[], dict[str, int]]  # bytes per file (SQLite) or table (PostgreSQL)
    drop: Callable[[], None]


def sqlite_store(directory: Path) -> Store:
    """A SQLite file of its own in `directory` (its -wal and -shm files count as disk)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "profiles.db"

    def disk() -> dict[str, int]:
        return {
            f.name: f.stat().st_size
            for f in sorted(directory.iterdir())
            if f.name.startswith(path.name)
        }

    def drop() -> None:
        shutil.rmtree(directory, ignore_errors=True)

    version = f"SQLite {sqlite3.sqlite_version}"
    return Store("sqlite", f"sqlite:///{path}", version, str(directory), disk, drop)


def postgres_store(base_url: str, schema: str | None = None) -> Store:
    """A schema of its own on the PostgreSQL at `base_url` (search_path in the URL): a new
    one, or `schema` kept by an earlier run."""
    admin = create_engine(base_url, connect_args={"connect_timeout": 5})
    with admin.begin() as conn:
        version = conn.execute(text("SHOW server_version")).scalar()
        if schema is None:
            schema = f"bench_profiles_{os.urandom(5).hex()}"
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def disk() -> dict[str, int]:
        # pg_total_relation_size: the table with its indexes and TOAST.
        with admin.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :schema AND c.relkind = 'r' ORDER BY 2 DESC"
                ),
                {"schema": schema},
            )
            return {name: int(size) for name, size in rows}

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    separator = "&" if "?" in base_url else "?"
    url = f"{base_url}{separator}options=-csearch_path%3D{schema}"
    return Store("postgresql", url, f"PostgreSQL {version}", schema, disk, drop)


# --- readings ----------------------------------------------------------------------------

Sample = tuple[float, dict[str, tuple[float, float]], float]  # time, name -> (RSS, CPU), busy


class Sampler(threading.Thread):
    """Every `every_s`: RSS (MiB) and CPU seconds of each watched process, and the CPU
    seconds the whole machine was busy (/proc/stat), stamped with wall-clock time."""

    def __init__(self, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.pids: dict[str, int] = {}
        self.samples: list[Sample] = []
        self._done = threading.Event()
        self._ticks = os.sysconf("SC_CLK_TCK")

    def watch(self, name: str, pid: int) -> None:
        self.pids = {**self.pids, name: pid}

    def read(self) -> Sample:
        found = {}
        for name, pid in self.pids.items():
            reading = self._process(pid)
            if reading is not None:
                found[name] = reading
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:8]
        user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields)
        busy = (user + nice + system + irq + softirq) / self._ticks
        return time.time(), found, busy

    def _process(self, pid: int) -> tuple[float, float] | None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        rss = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:"))
        fields = stat[stat.rindex(")") + 2 :].split()
        return rss / 1024, (int(fields[11]) + int(fields[12])) / self._ticks

    def run(self) -> None:
        while not self._done.wait(self.every_s):
            self.samples.append(self.read())

    def stop(self) -> None:
        self._done.set()
        self.join()

    def window(self, started: float, ended: float) -> dict[str, Any]:
        """Per process: RSS just before, peak RSS and CPU seconds over [started, ended];
        and the CPU seconds the rest of the machine used meanwhile."""
        before = [s for s in self.samples if s[0] < started]
        inside = [s for s in self.samples if started <= s[0] <= ended]
        after = [s for s in self.samples if s[0] > ended]
        first = before[-1] if before else (inside[0] if inside else None)
        last = after[0] if after else (inside[-1] if inside else None)
        if first is None or last is None:
            return {}
        found: dict[str, Any] = {}
        for name in self.pids:
            cpu = None
            if name in first[1] and name in last[1]:
                cpu = last[1][name][1] - first[1][name][1]
            found[name] = {
                "rss_before_mib": first[1].get(name, (None, None))[0],
                "rss_peak_mib": max((s[1][name][0] for s in inside if name in s[1]), default=None),
                "cpu_s": cpu,
            }
        ours = sum(f["cpu_s"] or 0.0 for f in found.values())
        found["rest of machine"] = {"cpu_s": last[2] - first[2] - ours}
        found["seconds"] = last[0] - first[0]
        return found


def wait_quiet(limit_s: float, idle_share: float = 0.85, window_s: float = 10.0) -> float:
    """Wait (at most `limit_s`) until the machine was at least `idle_share` idle over a
    `window_s` window; the idle share of the last window (over one second when `limit_s`
    is 0: not waiting, only saying how busy the machine was)."""
    window_s = min(window_s, max(limit_s, 1.0))
    deadline = time.monotonic() + limit_s
    ticks = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1

    def busy() -> float:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
        return (sum(fields[:3]) + fields[5] + fields[6]) / ticks

    while True:
        start = busy()
        time.sleep(window_s)
        idle = 1 - (busy() - start) / (window_s * cores)
        if idle >= idle_share or time.monotonic() >= deadline:
            return idle
        say(f"the machine is {idle:.0%} idle; waiting for {idle_share:.0%} before measuring")


# --- processes ---------------------------------------------------------------------------


def run_child(
    module: str,
    args: list[str],
    timeout_s: float,
    started: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run `python -m module args --out FILE` from the repository root; its JSON answer.
    `started` is told the child's pid."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    try:
        child = subprocess.Popen([sys.executable, "-m", module, *args, "--out", str(out)], cwd=ROOT)
        if started:
            started(child.pid)
        try:
            code = child.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise
        if code != 0:
            raise BenchFailed(f"{module} exited with code {code}")
        answer: dict[str, Any] = json.loads(out.read_text())
        return answer
    finally:
        out.unlink(missing_ok=True)


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"RECOFLEET_DATA_DIR": str(data_dir), "RECOFLEET_BUS": "local", **settings})
    return env


@contextlib.contextmanager
def started(
    name: str, module: str, env: dict[str, str], log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m module` with `env`, its output in `log_path`; SIGTERM when done."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within 30 s of SIGTERM; killing it")
                process.kill()
                process.wait()


@contextlib.contextmanager
def profiles_service(store: Store, data_dir: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The profiles service on `store`, as the fleet starts it, once gRPC health says
    SERVING; its address and process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    addr = f"127.0.0.1:{free_port()}"
    env = service_env(
        data_dir, RECOFLEET_PROFILES_ADDR=addr, RECOFLEET_PROFILES_DATABASE_URL=store.url
    )
    log = data_dir / "profiles.log"
    with started("profiles", "services.profiles", env, log) as process:
        wait_serving("profiles", SERVICE_NAME, addr, process, log)
        yield addr, process


def wait_serving(
    name: str,
    grpc_service: str,
    addr: str,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float = 300,
) -> None:
    """Until the service `name` at `addr` says SERVING on the gRPC health check for
    `grpc_service`; fails at once when its process exits, with its log."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchFailed(f"the {name} service exited; log {log}:\n{log.read_text()}")
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=grpc_service), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise BenchFailed(f"the {name} service was not serving within {timeout_s:.0f}s; log {log}")


@contextlib.contextmanager
def gateway(
    profiles_addr: str, data_dir: Path
) -> Iterator[tuple[str, str, subprocess.Popen[bytes]]]:
    """The gateway in front of the profiles service alone (the other services are not
    running: only the segment routes are used); its URL, admin key and process."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    key = f"bench-{secrets.token_urlsafe(32)}"
    env = service_env(
        data_dir,
        RECOFLEET_PROFILES_ADDR=profiles_addr,
        RECOFLEET_GATEWAY_HOST="127.0.0.1",
        RECOFLEET_GATEWAY_PORT=str(port),
        RECOFLEET_ADMIN_KEY=key,
    )
    env.pop("RECOFLEET_GATEWAY_DATABASE_URL", None)
    url = f"http://127.0.0.1:{port}"
    log = data_dir / "gateway.log"
    with started("gateway", "services.gateway", env, log) as process:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise BenchFailed(f"the gateway exited; log {log}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise BenchFailed(f"the gateway did not answer within 120 s; log {log}")
            time.sleep(0.2)
        yield url, key, process
