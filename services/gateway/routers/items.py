"""Items: similar items for product pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from services.gateway.auth import require
from services.gateway.deps import ComposerDep, SettingsDep, checked_limit
from services.gateway.responses import errors, similar_items_link
from services.gateway.schemas import SimilarOut

router = APIRouter(prefix="/v1/items", tags=["items"])


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
    item_id: Annotated[str, Path(min_length=1, max_length=128)],
    composer: ComposerDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 10,
) -> SimilarOut:
    rec = await composer.similar(item_id, checked_limit(limit, settings))
    return SimilarOut.of(rec, item_id)
