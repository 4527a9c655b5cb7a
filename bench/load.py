"""Load shapes for the gateway benchmark: open loop at a fixed arrival rate, peak through
wrk, and the ceiling of the same web stack serving a fixed answer.

Open loop: requests leave on a fixed schedule whatever the answers do, and each latency is
counted from when its request was due, so a slow answer cannot hide the queue behind it
(closed-loop clients wait, and so measure less). Peak: wrk, a C load generator, at a fixed
number of connections. Ceiling: a bare FastAPI app on the same uvicorn options, serving a
fixed answer of the same size, under the same wrk; recommendations/s divided by it says
how much of what the web stack could serve the fleet reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


async def open_loop(
    send: Callable[[float], Coroutine[Any, Any, T]], rate_per_s: float, seconds: float
) -> tuple[list[T], float, float]:
    """Call `send(due)` at `rate_per_s` for `seconds`, each at its due time (perf_counter),
    concurrently; the outcomes, the wall time, and the worst lag of a send behind its
    schedule (the generator itself falling behind)."""
    count = max(1, int(rate_per_s * seconds))
    interval = 1.0 / rate_per_s
    started = time.perf_counter()
    tasks: list[asyncio.Task[T]] = []
    worst_lag = 0.0
    for n in range(count):
        due = started + n * interval
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        worst_lag = max(worst_lag, time.perf_counter() - due)
        tasks.append(asyncio.create_task(send(due)))
    outcomes = await asyncio.gather(*tasks)
    return list(outcomes), time.perf_counter() - started, worst_lag


@dataclass
class WrkResult:
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
local key = os.getenv("BENCH_KEY") or ""
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", paths[(n % #paths) + 1], {["x-api-key"] = key})
end
"""


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    base_url: str, paths: Sequence[str], key: str, connections: int, seconds: float
) -> WrkResult:
    """wrk (one thread) cycling through `paths` with the access key, at `connections`."""
    with tempfile.TemporaryDirectory() as tmp:
        script, listed = Path(tmp) / "paths.lua", Path(tmp) / "paths.txt"
        script.write_text(WRK_SCRIPT)
        listed.write_text("\n".join(paths) + "\n")
        env = os.environ | {"BENCH_PATHS": str(listed), "BENCH_KEY": key}
        done = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "--timeout",
                "10s",
                "-s",
                str(script),
                base_url,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    return parse_wrk(done.stdout)


def parse_wrk(out: str) -> WrkResult:
    def latency(label: str) -> float:
        found = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not found:
            return float("nan")
        value, unit = float(found[1]), found[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if done is None:
        raise ValueError(f"wrk printed no request count:\n{out}")
    seconds = float(done[2]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[done[3]]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        requests=int(done[1]),
        seconds=seconds,
        requests_per_s=int(done[1]) / seconds,
        p50_ms=latency("50"),
        p90_ms=latency("90"),
        p99_ms=latency("99"),
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=sum(int(v) for v in errors.groups()) if errors else 0,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def ceiling_app(answer: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """A bare FastAPI app on the gateway's uvicorn options that answers every
    recommendation path with `answer`; yields its base URL and pid."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as body:
        json.dump(answer, body)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ceiling_app", "--port", str(port), "--body", body.name],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the ceiling app did not start")
            time.sleep(0.1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(body.name)
