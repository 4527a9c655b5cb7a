"""Items: an item as the catalog holds it, and similar items for product pages."""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import APIRouter, Path, Query

from services.gateway.auth import require
from services.gateway.calls import call
from services.gateway.deps import ClientsDep, ComposerDep, SettingsDep, TrafficDep, checked_limit
from services.gateway.merch_schemas import CatalogItemOut
from services.gateway.responses import errors, similar_items_link
from services.gateway.schemas import SimilarOut
from services.gen.recofleet.campaigns.v1 import campaigns_pb2

router = APIRouter(prefix="/v1/items", tags=["items"])
ItemId = Annotated[str, Path(min_length=1, max_length=128, description="The shop's item id")]
# A read of campaigns' store, off any recommendation's budget.
ITEM_DEADLINE_S = 2.0


@router.get(
    "/{item_id}",
    operation_id="get_item",
    dependencies=[require("recommendations:read")],
    response_model=CatalogItemOut,
    responses={
        200: {
            "description": "The item as the catalog holds it: what `PUT /v1/items` sent last "
            "(tags, brand and attributes included), once campaigns has read it.",
            "links": {"similar": similar_items_link("/item_id")},
        },
        **errors(404, 422, 503, descriptions={404: "The catalog does not know this item."}),
    },
)
async def get_item(item_id: ItemId, clients: ClientsDep) -> CatalogItemOut:
    request = campaigns_pb2.GetItemRequest(item_id=item_id)
    reply = await call(
        clients.merchandising.GetItem,
        request,
        timeout=ITEM_DEADLINE_S,
        statuses={grpc.StatusCode.NOT_FOUND: 404},
        service="campaigns",
    )
    return CatalogItemOut.of(reply)


@router.get(
    "/{item_id}/similar",
    operation_id="get_similar_items",
    dependencies=[require("recommendations:read")],
    response_model=SimilarOut,
    responses={
        200: {
            "description": "Items similar to this one, most similar first; `degraded` when "
            "retrieval was slow or down (popular items instead).",
            "links": {"similar": similar_items_link("/items/0/item_id")},
        },
        **errors(
            422,
            descriptions={
                422: "A query or path parameter is invalid (`limit` past the maximum, too)."
            },
        ),
    },
)
async def similar(
    item_id: ItemId,
    composer: ComposerDep,
    settings: SettingsDep,
    traffic: TrafficDep,
    limit: Annotated[int, Query(ge=1)] = 10,
) -> SimilarOut:
    rec = await composer.similar(item_id, checked_limit(limit, settings))
    traffic.served(degraded=rec.degraded)
    return SimilarOut.of(rec, item_id)
