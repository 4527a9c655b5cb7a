"""The benchmark's load shapes: wrk's report read right, the open loop keeps its schedule."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.load import open_loop, parse_wrk

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8080
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    61.20ms   12.07ms 210.33ms   80.12%
    Req/Sec   262.01     30.12   310.00     71.00%
  Latency Distribution
     50%   59.87ms
     75%   66.20ms
     90%  750.00us
     99%    1.21s
  2620 requests in 10.01s, 3.43MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:    261.74
Transfer/sec:    350.71KB
"""


def test_wrk_figures_are_read_in_milliseconds_whatever_unit_wrk_prints() -> None:
    result = parse_wrk(WRK_OUTPUT)

    assert result.requests == 2620
    assert result.seconds == pytest.approx(10.01)
    assert result.requests_per_s == pytest.approx(2620 / 10.01)
    assert result.p50_ms == pytest.approx(59.87)
    assert result.p90_ms == pytest.approx(0.75)
    assert result.p99_ms == pytest.approx(1210.0)
    assert (result.non_2xx, result.socket_errors) == (4, 3)


def test_a_report_without_a_request_count_is_refused() -> None:
    with pytest.raises(ValueError, match="no request count"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


async def test_the_open_loop_sends_on_schedule_while_answers_are_slow() -> None:
    sent: list[float] = []

    async def slow(due: float) -> float:
        sent.append(time.perf_counter())
        await asyncio.sleep(0.2)  # far slower than the 10 ms between sends
        return time.perf_counter() - due

    latencies, wall, _ = await open_loop(slow, rate_per_s=100, seconds=0.3)

    assert len(latencies) == 30
    # A closed loop would have sent one request per 0.2 s; this one kept sending.
    assert sent[-1] - sent[0] < 0.29 + 0.1
    assert min(latencies) >= 0.2
    assert wall < 0.3 + 0.2 + 0.2
