"""The web stack's ceiling: the gateway's FastAPI and uvicorn, serving a fixed answer.

    python -m bench.ceiling_app --port PORT --body ANSWER.json

Every GET /v1/members/{member_id}/recommendations returns ANSWER (as FastAPI serialises a
dict), behind the same uvicorn options and garbage-collector tuning as the gateway, so
that the benchmark can divide what the fleet serves by what this stack could.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from services.common.grpc_server import tune_gc
from services.gateway.server import WEB_STACK


def build(answer: dict[str, Any]) -> FastAPI:
    app = FastAPI(title="ceiling")

    @app.get("/v1/members/{member_id}/recommendations")
    async def recommendations(member_id: str, limit: int = 10) -> dict[str, Any]:
        return answer

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    app = build(json.loads(args.body.read_text()))
    tune_gc()
    uvicorn.run(
        app,
        **WEB_STACK,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
