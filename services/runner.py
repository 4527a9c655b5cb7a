"""Run the whole fleet on one machine: every service its own process on loopback.

Services start first and must report SERVING on the gRPC health check; the gateway
starts last and must answer /readyz. Ctrl-C (or SIGTERM) stops the gateway first, then
the services, each with SIGTERM and a grace period, then SIGKILL for stragglers.

While running, the runner supervises: a process that dies is started again (as a
Kubernetes deployment would), up to `max_restarts` times in `restart_window_s`; past
that the fleet stops, since something is wrong that restarting will not fix. Each
process's pid is kept in `<data_dir>/run/<name>.pid` for operators and crash tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import FleetSettings

SERVICES = ("ingestion", "profiles", "retrieval", "ranking", "campaigns", "analytics")


class FleetFailed(RuntimeError):
    """A process exited or never became ready; the message says which and where its log is."""


class StopRequested(Exception):
    """Ctrl-C or SIGTERM arrived while the fleet was starting."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    restarts: list[float] = field(default_factory=list)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@dataclass
class Fleet:
    settings: FleetSettings
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)
    stop_requested: bool = False
    max_restarts: int = 5
    restart_window_s: float = 60.0

    def handle_signals(self) -> None:
        """From now on Ctrl-C and SIGTERM ask the fleet to stop, even while it is starting."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self.stop_requested = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"

    def address(self, name: str) -> str:
        address: str = getattr(self.settings, f"{name}_addr")
        return address

    def start(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            for name in SERVICES:
                self.children.append(self._spawn(name))
            for child in self.children:
                self._wait_serving(child, deadline)
            gateway = self._spawn("gateway")
            self.children.append(gateway)
            self._wait_ready(gateway, deadline)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str) -> Child:
        logs = self.settings.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: Ctrl-C reaches the runner only, which stops the fleet in order.
                start_new_session=True,
            )
        pids = self.settings.data_dir / "run"
        pids.mkdir(parents=True, exist_ok=True)
        (pids / f"{name}.pid").write_text(f"{process.pid}\n")
        return Child(name, process, log_path)

    def _check_alive(self, child: Child) -> None:
        if self.stop_requested:
            raise StopRequested
        if child.process.poll() is not None:
            raise FleetFailed(
                f"{child.name} exited with code {child.process.returncode}; "
                f"log {child.log_path}:\n{child.tail()}"
            )

    def _wait_serving(self, child: Child, deadline: float) -> None:
        with grpc.insecure_channel(self.address(child.name)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                self._check_alive(child)
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise FleetFailed(f"{child.name} not SERVING in time; log {child.log_path}")
                time.sleep(0.2)

    def _wait_ready(self, child: Child, deadline: float) -> None:
        while True:
            self._check_alive(child)
            try:
                if httpx.get(f"{self.gateway_url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise FleetFailed(f"gateway not ready in time; log {child.log_path}")
            time.sleep(0.2)

    def _restart(self, child: Child) -> Child | None:
        now = time.monotonic()
        recent = [t for t in child.restarts if now - t < self.restart_window_s]
        print(f"{child.name} exited ({child.process.returncode}):\n{child.tail(10)}", flush=True)
        if len(recent) >= self.max_restarts:
            print(f"{child.name} keeps exiting; stopping the fleet", flush=True)
            return None
        print(f"restarting {child.name}", flush=True)
        replacement = self._spawn(child.name)
        replacement.restarts = [*recent, now]
        return replacement

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the gateway first (no new requests), then the services; kill what lingers."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
                try:
                    child.process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        self.children.clear()

    def watch(self) -> int:
        """Until a signal asks to stop, restart processes that die; return the exit code."""
        while not self.stop_requested:
            for index, child in enumerate(self.children):
                if child.process.poll() is None:
                    continue
                replacement = self._restart(child)
                if replacement is None:
                    self.stop()
                    return 1
                self.children[index] = replacement
            time.sleep(0.2)
        print("stopping the fleet ...", flush=True)
        self.stop()
        print("stopped", flush=True)
        return 0
