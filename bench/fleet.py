"""What every benchmark here shares: a fleet of its own, the machine, CPU readings, tables."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.campaigns.settings import CampaignsSettings
from services.common.bus import CATALOG_TOPIC, EVENTS_TOPIC, EventBus
from services.common.settings import FleetSettings
from services.profiles.settings import ProfilesSettings
from services.retrieval.settings import RetrievalSettings
from services.runner import SERVICES, Fleet, FleetFailed


class BenchFailed(RuntimeError):
    """The benchmark could not run (setup failed); the message says where to look."""


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the machine and the data ------------------------------------------------------------


@contextlib.contextmanager
def work_dir(bench: str, keep: bool) -> Iterator[Path]:
    """A scratch folder for one run of `bench`, removed afterwards unless `keep`."""
    work = Path(tempfile.mkdtemp(prefix=f"recofleet-bench-{bench}-"))
    try:
        yield work
    finally:
        if keep:
            say(f"work dir kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def publish(results: dict[str, Any], report: str, path: Path | None) -> None:
    """Print the report; write the figures as JSON to `path` too, when given."""
    print(report)
    if path:
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"figures written to {path}")


def machine() -> dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in cpuinfo.splitlines()
        if line.startswith("model name")
    ]
    mhz = [
        line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("cpu MHz")
    ]
    meminfo = dict(
        (line.split(":", 1)[0], line.split(":", 1)[1].split()[0])
        for line in _read("/proc/meminfo").splitlines()
        if ":" in line
    )
    release = dict(
        (key, value.strip('"'))
        for key, _, value in (line.partition("=") for line in _read("/etc/os-release").splitlines())
        if value
    )
    quota = _read("/sys/fs/cgroup/cpu.max").strip()
    return {
        "cpu_model": models[0] if models else (platform.processor() or "unknown"),
        "cpu_mhz": float(mhz[0]) if mhz else None,
        "cpus_listed": len(models) or os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cgroup_cpu_max": quota or None,
        "ram_gib": round(int(meminfo.get("MemTotal", "0")) / 1024**2, 1),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": release.get("PRETTY_NAME", platform.system()),
        "kernel": platform.release(),
        "arch": platform.machine(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def code_version() -> str:
    """The commit measured, and whether services/ had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "services"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown (no git)"
    if not commit:
        return "unknown (not a git checkout)"
    return f"{commit}{' + uncommitted changes in services/' if dirty else ''}"


# --- a fleet of our own ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fleet_settings(data_dir: Path) -> tuple[FleetSettings, dict[str, str]]:
    """Settings on free loopback ports, and the environment that gives children the same,
    with an admin access key of this run's (`access_key`), kept in the data dir's store."""
    overrides: dict[str, Any] = {f"{name}_addr": f"127.0.0.1:{free_port()}" for name in SERVICES}
    overrides |= {"data_dir": data_dir, "gateway_host": "127.0.0.1", "gateway_port": free_port()}
    env = dict(os.environ)
    env.update({f"RECOFLEET_{key.upper()}": str(value) for key, value in overrides.items()})
    env["RECOFLEET_ADMIN_KEY"] = f"bench-{secrets.token_urlsafe(32)}"
    env.pop("RECOFLEET_GATEWAY_DATABASE_URL", None)
    return FleetSettings(**overrides), env


def access_key(fleet: Fleet) -> dict[str, str]:
    """The header that carries the bench fleet's admin key (the gateway seeds it at start)."""
    return {"authorization": f"Bearer {fleet.env['RECOFLEET_ADMIN_KEY']}"}


def cli(env: dict[str, str], *args: str, timeout_s: float = 3600) -> tuple[str, float]:
    """Run `recofleet ARGS` as users do; return its output and how long it took."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise BenchFailed(f"recofleet {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip(), time.perf_counter() - started


def consumer_groups() -> dict[str, tuple[str, ...]]:
    both = (CATALOG_TOPIC, EVENTS_TOPIC)
    return {
        ProfilesSettings().consumer_group: both,
        RetrievalSettings().consumer_group: both,
        CampaignsSettings().consumer_group: (CATALOG_TOPIC,),
    }


def lags(bus: EventBus) -> dict[str, int]:
    return {
        group: sum(bus.lag(group, topic) for topic in topics)
        for group, topics in consumer_groups().items()
    }


def check_alive(fleet: Fleet) -> None:
    for child in fleet.children:
        if child.process.poll() is not None:
            raise FleetFailed(
                f"{child.name} exited with code {child.process.returncode}; "
                f"log {child.log_path}:\n{child.tail()}"
            )


@dataclass
class CatchUp:
    seconds: float  # until every group had caught up, or the timeout
    by_group: dict[str, float | None]  # when each group caught up (None: not in time)
    lag_left: dict[str, int]


def wait_caught_up(bus: EventBus, fleet: Fleet, timeout_s: float) -> CatchUp:
    """Wait until every consumer group has committed everything on the bus (or timeout_s)."""
    started = time.perf_counter()
    by_group: dict[str, float | None] = {}
    while True:
        check_alive(fleet)
        left = lags(bus)
        elapsed = time.perf_counter() - started
        for group, lag in left.items():
            if lag == 0:
                by_group.setdefault(group, round(elapsed, 2))
        if not any(left.values()) or elapsed > timeout_s:
            return CatchUp(elapsed, {g: by_group.get(g) for g in left}, left)
        time.sleep(0.1)


# --- CPU and memory of each process ------------------------------------------------------


def process_cpu(fleet: Fleet) -> dict[str, float]:
    """CPU seconds (user + system, all threads) used so far by each fleet process and by us."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for child in fleet.children:
        stat = _read(f"/proc/{child.process.pid}/stat")
        if stat:
            fields = stat[stat.rindex(")") + 2 :].split()
            used[child.name] = (int(fields[11]) + int(fields[12])) / ticks
    used["bench client"] = time.process_time()
    # The whole machine, from /proc/stat: what the fleet and we did not use was used by others.
    fields = _read("/proc/stat").splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) / ticks for v in fields[:8])
    busy = user + nice + system + irq + softirq
    used["rest of machine"] = busy - sum(used.values())
    used["idle (all CPUs)"] = idle + iowait
    used["steal (hypervisor)"] = steal
    return used


def process_rss_mib(fleet: Fleet) -> dict[str, float]:
    rss: dict[str, float] = {}
    pids = [(c.name, c.process.pid) for c in fleet.children] + [("bench client", os.getpid())]
    for name, pid in pids:
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith("VmRSS:"):
                rss[name] = round(int(line.split()[1]) / 1024, 1)
    return rss


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ordered list."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line([str(h) for h in headers]), rule, *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
