"""What the shop asks about a member: recommendations, profile, offers."""

from __future__ import annotations

from typing import Annotated, Literal

import grpc
from fastapi import APIRouter, HTTPException, Path, Query

from services.gateway.deps import ClientsDep, ComposerDep, SettingsDep, checked_limit
from services.gateway.schemas import OfferOut, OffersOut, ProfileOut, RecommendationsOut
from services.gen.recofleet.campaigns.v1 import campaigns_pb2

router = APIRouter(prefix="/v1/members", tags=["members"])

MemberId = Annotated[str, Path(min_length=1, max_length=128, description="The shop's member id")]
Placement = Literal["home", "product", "cart", "email", "search", "category"]


def _exclusions(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


@router.get("/{member_id}/recommendations", response_model=RecommendationsOut)
async def recommendations(
    member_id: MemberId,
    composer: ComposerDep,
    settings: SettingsDep,
    placement: Placement = "home",
    limit: Annotated[int, Query(ge=1)] = 10,
    context_item: Annotated[str | None, Query(max_length=128)] = None,
    exclude: Annotated[str | None, Query(description="Comma-separated item ids")] = None,
) -> RecommendationsOut:
    rec = await composer.recommend(
        member_id,
        placement,
        checked_limit(limit, settings),
        context_item or None,
        _exclusions(exclude),
    )
    return RecommendationsOut.of(rec)


@router.get("/{member_id}/profile", response_model=ProfileOut)
async def profile(member_id: MemberId, composer: ComposerDep) -> ProfileOut:
    try:
        found = await composer.profile(member_id)
    except grpc.aio.AioRpcError as exc:
        raise HTTPException(503, f"profiles unavailable ({exc.code().name}); retry") from exc
    if not found.known:
        raise HTTPException(404, f"no events seen for member '{member_id}'")
    return ProfileOut.of(found)


@router.get("/{member_id}/offers", response_model=OffersOut)
async def offers(
    member_id: MemberId,
    composer: ComposerDep,
    clients: ClientsDep,
    settings: SettingsDep,
    channel: Annotated[str | None, Query(max_length=32)] = None,
) -> OffersOut:
    try:
        found = await composer.profile(member_id)
        reply = await clients.campaigns.GetOffers(
            campaigns_pb2.GetOffersRequest(
                member_id=member_id, channel=channel or "", orders=found.rfm.frequency
            ),
            timeout=settings.deadlines.campaigns,
        )
    except grpc.aio.AioRpcError:
        # Without the profile or campaigns no offer can be vouched for; say so, don't fail.
        return OffersOut(member_id=member_id, channel=channel, offers=[], degraded=True)
    return OffersOut(
        member_id=member_id,
        channel=channel,
        offers=[OfferOut.of(o) for o in reply.offers],
        degraded=False,
    )
