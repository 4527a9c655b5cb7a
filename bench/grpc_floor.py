"""The floor of one gRPC hop: server CPU per trivial unary call, for each Python server kind.

    python -m bench.grpc_floor [--calls 20000] [--concurrency 8]

Starts a server that answers the standard health check (no work at all) in a process of
its own, calls it from a grpc.aio client, and prints calls/s and the server's CPU per
call, for the grpc.aio server, the aio server on uvloop and the thread-pool server. Every
recommendation makes four such hops, so this is what no service's own work can go below.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.fleet import machine, say, table
from bench.load import free_port

KINDS = ("aio", "aio-uvloop", "thread-pool")


class AsyncHealth(health_pb2_grpc.HealthServicer):
    async def Check(self, request: object, context: object) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def serve_aio(port: int) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(AsyncHealth(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve(kind: str, port: int) -> None:
    if kind == "thread-pool":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return
    if kind == "aio-uvloop":
        import uvloop

        uvloop.install()
    asyncio.run(serve_aio(port))


async def call(port: int, calls: int, concurrency: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for _ in range(500):  # warm up, and wait for the server
            await stub.Check(request, wait_for_ready=True)
        pending = iter(range(calls))

        async def worker() -> None:
            for _ in pending:
                await stub.Check(request)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    say(str(machine()))
    rows = []
    for kind in KINDS:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_floor", "--serve", kind, "--port", str(port)]
        )
        try:
            before = cpu_seconds(server.pid)
            wall = asyncio.run(call(port, args.calls, args.concurrency))
            used = cpu_seconds(server.pid) - before
        finally:
            server.kill()
            server.wait()
        rows.append([kind, args.calls / wall, used * 1e6 / args.calls])
    print(table(["server", "calls/s", "server CPU µs per call"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
