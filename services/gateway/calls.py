"""One call to a service on behalf of an HTTP request, its refusals as HTTP statuses."""

from __future__ import annotations

from typing import Any

import grpc
from fastapi import HTTPException


async def call(
    method: Any,
    request: Any,
    *,
    timeout: float,
    statuses: dict[grpc.StatusCode, int],
    service: str,
) -> Any:
    """The reply; a refusal as the HTTP status `statuses` gives its code (the service's
    message as the detail), anything else as a 503 to retry."""
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        status = statuses.get(exc.code())
        if status is None:
            raise HTTPException(
                503,
                f"{service} unavailable ({exc.code().name}); retry",
                headers={"Retry-After": "1"},
            ) from exc
        raise HTTPException(status, exc.details() or exc.code().name) from exc
