"""Items: similar items for product pages."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from services.gateway.deps import ComposerDep, SettingsDep, checked_limit
from services.gateway.schemas import SimilarOut

router = APIRouter(prefix="/v1/items", tags=["items"])


@router.get("/{item_id}/similar", response_model=SimilarOut)
async def similar(
    item_id: Annotated[str, Path(min_length=1, max_length=128)],
    composer: ComposerDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = 10,
) -> SimilarOut:
    rec = await composer.similar(item_id, checked_limit(limit, settings))
    return SimilarOut.of(rec, item_id)
