"""Models: the retrieval model versions kept, and rolling back to an earlier one.

The retrieval service owns its model versions (DESIGN.md): the gateway checks the key and
shapes the answers. A rollback moves the model store's CURRENT, which every retrieval
replica follows within its reload interval; the replica that answers serves it at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import grpc
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.auth import require
from services.gateway.bodies import model_body, read_model
from services.gateway.deps import ClientsDep
from services.gateway.responses import errors
from services.gateway.routing import AllowingRoute
from services.gen.recofleet.retrieval.v1 import retrieval_pb2

router = APIRouter(prefix="/v1/models", tags=["models"], route_class=AllowingRoute)

# Listing reads a few small files; a rollback loads a whole model (seconds for a large one).
LIST_DEADLINE_S = 5.0
ROLLBACK_DEADLINE_S = 60.0
VERSION_PATTERN = r"^[0-9A-Za-z._-]+$"
ROLLBACK_STATUS = {grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.NOT_FOUND: 404}
LIST_UNAVAILABLE = "The retrieval service is unavailable: retry."
# A call that timed out may still have switched: a retry without a version would then go
# back one more, so the description points at the listing and the explicit form.
ROLLBACK_UNAVAILABLE = (
    "The retrieval service is unavailable or did not answer in time: retry. One that did "
    "not answer may have switched all the same; `GET /v1/models` says, and a retry that "
    "names the version wanted cannot go back twice."
)


class ModelOut(BaseModel):
    service: Literal["retrieval"] = "retrieval"
    version: str
    trained_at: datetime | None = Field(description="When it was trained (UTC).")
    members: int = Field(description="Members trained on.")
    items: int = Field(description="Items in the model.")
    interactions: int = Field(description="Member-item interactions trained on.")
    factors: int
    current: bool = Field(description="The version every retrieval server loads.")
    served: bool = Field(description="The version the retrieval server that answered serves.")
    refused: str | None = Field(
        default=None, description="Why a server could not load it; null when none refused it."
    )


class ModelsOut(BaseModel):
    models: list[ModelOut] = Field(description="Oldest first.")


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=VERSION_PATTERN,
        description="A kept version to make current; none: the one before the current.",
        examples=["20261122T100000000000Z"],
    )


ROLLBACK_BODY = model_body(
    RollbackIn,
    "Optional: no body (or `{}`) goes back to the version before the current one; "
    '`{"version": "..."}` makes that kept version current.',
)
ROLLBACK_BODY["requestBody"]["required"] = False


async def _call(
    method: Any, request: Any, timeout: float, statuses: dict[grpc.StatusCode, int]
) -> Any:
    """The reply; a refusal as the HTTP status `statuses` gives its code, anything else
    as 503."""
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        status = statuses.get(exc.code())
        if status is None:
            raise HTTPException(
                503,
                f"retrieval unavailable ({exc.code().name}); retry",
                headers={"Retry-After": "1"},
            ) from exc
        raise HTTPException(status, exc.details() or exc.code().name) from exc


@router.get(
    "",
    operation_id="list_models",
    dependencies=[require("recommendations:read")],
    response_model=ModelsOut,
    responses={
        200: {"description": "The retrieval model versions kept, oldest first."},
        **errors(503, descriptions={503: LIST_UNAVAILABLE}),
    },
)
async def list_models(clients: ClientsDep) -> ModelsOut:
    """The retrieval model versions kept, with their training figures, which one is current
    and why any was refused."""
    reply = await _call(
        clients.retrieval.ListModels, retrieval_pb2.ListModelsRequest(), LIST_DEADLINE_S, {}
    )
    return ModelsOut(models=[_listed(m, reply.served) for m in reply.models])


@router.post(
    "/retrieval/rollback",
    operation_id="rollback_retrieval_model",
    dependencies=[require("admin")],
    response_model=ModelOut,
    responses={
        200: {"description": "The model now current, already served by the replica that answered."},
        **errors(
            400,
            404,
            409,
            413,
            415,
            422,
            503,
            descriptions={
                404: "No kept version of that name.",
                409: "No version before the current one is kept (or the one asked for could not "
                "be loaded): the current one stays.",
                503: ROLLBACK_UNAVAILABLE,
            },
        ),
    },
    openapi_extra=ROLLBACK_BODY,
)
async def rollback_retrieval_model(request: Request, clients: ClientsDep) -> ModelOut:
    """Make an earlier retrieval model current: the one before the current, or the version
    the body names. Every replica follows within its reload interval."""
    body = await _rollback_body(request)
    info = await _call(
        clients.retrieval.RollbackModel,
        retrieval_pb2.RollbackModelRequest(version=body.version or ""),
        ROLLBACK_DEADLINE_S,
        ROLLBACK_STATUS,
    )
    return ModelOut(
        version=info.version,
        trained_at=_instant(info.trained_at),
        members=info.members,
        items=info.items,
        interactions=info.interactions,
        factors=info.factors,
        current=True,
        served=True,
    )


async def _rollback_body(request: Request) -> RollbackIn:
    declared = request.headers.get("content-length")
    chunked = "transfer-encoding" in request.headers
    if declared == "0" or (declared is None and not chunked):
        return RollbackIn()  # no body at all: roll back to the previous version
    return await read_model(request, RollbackIn)


def _listed(model: retrieval_pb2.ModelVersion, served: str) -> ModelOut:
    return ModelOut(
        version=model.version,
        trained_at=_instant(model.trained_at),
        members=model.members,
        items=model.items,
        interactions=model.interactions,
        factors=model.factors,
        current=model.current,
        served=model.version == served,
        refused=model.refused_reason or None,
    )


def _instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
