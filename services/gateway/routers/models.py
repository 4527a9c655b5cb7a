"""Models: the retrieval model versions and the rankers, rollback and activation.

The retrieval service owns its model versions and the ranking service its rankers
(DESIGN.md): the gateway checks the key and shapes the answers. A retrieval rollback moves
the model store's CURRENT, which every retrieval replica follows within its reload
interval; a ranker's activation is probed first and reaches every ranking replica within
its refresh interval (half a second by default).
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.auth import require
from services.gateway.bodies import model_body, read_optional_model
from services.gateway.calls import call
from services.gateway.deps import ClientsDep
from services.gateway.responses import errors
from services.gateway.routing import AllowingRoute
from services.gen.recofleet.ranking.v1 import ranking_pb2
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
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="The offline metrics training measured on held-out data (NDCG@10, "
        "recall@10, each source's precision@10); {} when the version says none.",
    )
    data_window: dict[str, Any] | None = Field(
        default=None, description="The first and last interaction it was trained on."
    )


class RankerVersionOut(BaseModel):
    version: str
    trained_at: datetime | None
    current: bool = Field(description="The version the ranker serves when asked for by name.")
    refused: str | None = Field(description="Why it was refused at activation, if it was.")
    meta: dict[str, Any] = Field(
        description="What the artifact says of itself: training data window, what it was "
        "trained from, settings, offline metrics."
    )


class RankerOut(BaseModel):
    service: Literal["ranking"] = "ranking"
    name: str
    origin: str = Field(description="`built-in`, or the package that registered it.")
    trained: bool = Field(description="Whether it needs a trained version.")
    active: bool = Field(description="The ranker answers use outside experiments.")
    versions: list[RankerVersionOut] = Field(description="Oldest first.")
    broken: str | None = Field(description="Why it cannot be built, if it cannot.")


class ModelsOut(BaseModel):
    models: list[ModelOut] = Field(description="The retrieval model versions, oldest first.")
    rankers: list[RankerOut] = Field(description="Every registered ranker, by name.")
    active_ranker: str = Field(description='The active ranker, as "name" or "name@version".')


class ActivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=VERSION_PATTERN,
        description="A kept version; none: the ranker's current one (retrieval: required).",
    )


class ActivatedOut(BaseModel):
    name: str
    version: str | None
    activated_at: datetime | None
    probe_median_ms: float = Field(description="Its median time on the probe request.")
    probe_p99_ms: float


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
ACTIVATE_BODY = model_body(
    ActivateIn,
    'Optional for a ranker: no body activates its current version; `{"version": "..."}` '
    "that kept version. Required for `retrieval`.",
)
ACTIVATE_BODY["requestBody"]["required"] = False
ACTIVATE_STATUS = {
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 422,
}
ModelName = Annotated[
    str,
    PathParam(
        pattern=r"^[0-9A-Za-z._-]+$",
        max_length=64,
        description="`retrieval`, or a ranker's name (`GET /v1/models`).",
    ),
]


async def _call(
    method: Any,
    request: Any,
    timeout: float,
    statuses: dict[grpc.StatusCode, int],
    service: str = "retrieval",
) -> Any:
    return await call(method, request, timeout=timeout, statuses=statuses, service=service)


@router.get(
    "",
    operation_id="list_models",
    dependencies=[require("recommendations:read")],
    response_model=ModelsOut,
    responses={
        200: {"description": "The retrieval model versions kept, and every ranker."},
        **errors(503, descriptions={503: LIST_UNAVAILABLE}),
    },
)
async def list_models(clients: ClientsDep) -> ModelsOut:
    """The retrieval model versions kept, with their training figures, which one is current
    and why any was refused; and every ranker with its versions and which one is active."""
    models, rankers = await asyncio.gather(
        _call(clients.retrieval.ListModels, retrieval_pb2.ListModelsRequest(), LIST_DEADLINE_S, {}),
        _call(
            clients.ranking.ListRankers,
            ranking_pb2.ListRankersRequest(),
            LIST_DEADLINE_S,
            {},
            "ranking",
        ),
    )
    return ModelsOut(
        models=[_listed(m, models.served) for m in models.models],
        rankers=[_ranker(r) for r in rankers.rankers],
        active_ranker=rankers.active,
    )


@router.post(
    "/{name}/activate",
    operation_id="activate_model",
    dependencies=[require("admin")],
    response_model=ActivatedOut,
    responses={
        200: {"description": "Active now, on every replica within a second."},
        **errors(
            400,
            404,
            409,
            413,
            415,
            422,
            503,
            descriptions={
                404: "No ranker of that name, or no kept version of that name.",
                409: "It failed to load or answered the probe wrongly (the detail says how): "
                "the active one stays.",
                503: "The service is unavailable: nothing changed, retry.",
            },
        ),
    },
    openapi_extra=ACTIVATE_BODY,
)
async def activate_model(name: ModelName, request: Request, clients: ClientsDep) -> ActivatedOut:
    """Make a ranker (or one of its versions) the one answers use outside experiments; for
    `retrieval`, make the version named current (as the rollback with a version does)."""
    body = await read_optional_model(request, ActivateIn)
    if name == "retrieval":
        if body.version is None:
            raise HTTPException(422, "version: required to activate a retrieval model")
        info = await _call(
            clients.retrieval.RollbackModel,
            retrieval_pb2.RollbackModelRequest(version=body.version),
            ROLLBACK_DEADLINE_S,
            ROLLBACK_STATUS,
        )
        return ActivatedOut(
            name="retrieval",
            version=info.version,
            activated_at=None,
            probe_median_ms=0.0,
            probe_p99_ms=0.0,
        )
    done = await _call(
        clients.ranking.ActivateRanker,
        ranking_pb2.ActivateRankerRequest(name=name, version=body.version or ""),
        ROLLBACK_DEADLINE_S,
        ACTIVATE_STATUS,
        "ranking",
    )
    return ActivatedOut(
        name=done.name,
        version=done.version or None,
        activated_at=_instant(done.activated_at),
        probe_median_ms=done.probe_median_ms,
        probe_p99_ms=done.probe_p99_ms,
    )


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
    body = await read_optional_model(request, RollbackIn)
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


def _ranker(info: ranking_pb2.RankerInfo) -> RankerOut:
    return RankerOut(
        name=info.name,
        origin=info.origin,
        trained=info.trained,
        active=info.active,
        broken=info.broken_reason or None,
        versions=[
            RankerVersionOut(
                version=v.version,
                trained_at=_instant(v.trained_at),
                current=v.current,
                refused=v.refused_reason or None,
                meta=_meta(v.meta_json),
            )
            for v in info.versions
        ],
    )


def _meta(text: str) -> dict[str, Any]:
    try:
        loaded = json.loads(text) if text else {}
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _listed(model: retrieval_pb2.ModelVersion, served: str) -> ModelOut:
    meta = _meta(model.meta_json)
    window = meta.get("data_window")
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
        metrics=_dict(meta.get("metrics")),
        data_window=window if isinstance(window, dict) else None,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
