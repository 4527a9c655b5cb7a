"""Items: similar items for product pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from services.gateway.deps import ComposerDep, SettingsDep
from services.gateway.schemas import ItemOut, SimilarOut

router = APIRouter(prefix="/v1/items", tags=["items"])


@router.get("/{item_id}/similar", response_model=SimilarOut)
async def similar(
    item_id: Annotated[str, Path(min_length=1, max_length=128)],
    composer: ComposerDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 10,
) -> SimilarOut:
    if limit > settings.max_limit:
        raise HTTPException(422, f"limit must be at most {settings.max_limit}")
    rec = await composer.similar(item_id, limit)
    return SimilarOut(
        recommendation_id=rec.recommendation_id,
        item_id=item_id,
        items=[
            ItemOut(
                item_id=i.item_id, score=i.score, reasons=i.reasons, category=i.category or None
            )
            for i in rec.items
        ],
        model=rec.model,
        degraded=rec.degraded,
    )
