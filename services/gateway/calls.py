"""One call to a service on behalf of an HTTP request, its refusals as HTTP statuses."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from fastapi import HTTPException

log = logging.getLogger(__name__)
# The service is down, overloaded or too slow, and the same request may well succeed in a
# moment (ingestion's answers too, services/gateway/routers/events.py, which also says when
# a slow ingestion may have accepted the request all the same).
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)


async def call(
    method: Any,
    request: Any,
    *,
    timeout: float,
    statuses: dict[grpc.StatusCode, int],
    service: str,
) -> Any:
    """The reply; a refusal as the HTTP status `statuses` gives its code (the service's
    message as the detail), an outage or overload as a 503 to retry, anything else
    (UNKNOWN, INTERNAL, DATA_LOSS: a bug) as a 500."""
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        raise refusal(exc, statuses, service) from exc


def refusal(
    exc: grpc.aio.AioRpcError, statuses: dict[grpc.StatusCode, int], service: str
) -> HTTPException:
    code = exc.code()
    status = statuses.get(code)
    if status is not None:
        return HTTPException(status, exc.details() or code.name)
    if code in RETRYABLE:
        return HTTPException(
            503, f"{service} unavailable ({code.name}); retry", headers={"Retry-After": "1"}
        )
    # A retry would only fail again, and the service's details (an exception's text) are
    # for the log, not for the client.
    log.error("%s failed: %s: %s", service, code.name, exc.details())
    return HTTPException(
        500,
        f"{service} failed on this request ({code.name}): a server error, logged; sending "
        "the same request again will not help",
    )
