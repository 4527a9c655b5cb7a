"""gRPC face of campaigns."""

from __future__ import annotations

import grpc

from services.campaigns.rules import apply_rules, eligible_offers
from services.campaigns.settings import CampaignsSettings
from services.campaigns.store import CatalogStore
from services.gen.recofleet.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc


class CampaignsServicer(campaigns_pb2_grpc.CampaignsServiceServicer):
    def __init__(self, store: CatalogStore, settings: CampaignsSettings) -> None:
        self._store = store
        self._settings = settings

    async def ApplyRules(
        self, request: campaigns_pb2.ApplyRulesRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.ApplyRulesResponse:
        # In memory and a few dozen candidates: cheaper than a hop to a worker thread.
        filtered = apply_rules(
            request.candidates,
            purchased=list(request.purchased_item_ids),
            excluded=list(request.exclude_item_ids),
            out_of_stock=self._store.out_of_stock,
        )
        return campaigns_pb2.ApplyRulesResponse(
            candidates=filtered.kept,
            removed=[
                campaigns_pb2.Removal(item_id=r.item_id, reason=r.reason) for r in filtered.removed
            ],
        )

    async def GetOffers(
        self, request: campaigns_pb2.GetOffersRequest, context: grpc.aio.ServicerContext
    ) -> campaigns_pb2.GetOffersResponse:
        if not request.member_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "member_id is required")
        offers = eligible_offers(request.orders, request.channel, self._settings.welcome)
        return campaigns_pb2.GetOffersResponse(
            offers=[
                campaigns_pb2.Offer(
                    offer_id=o.offer_id,
                    campaign_id=o.campaign_id,
                    title=o.title,
                    description=o.description,
                    coupon_code=o.coupon_code,
                    discount_percent=o.discount_percent,
                    channels=o.channels,
                )
                for o in offers
            ]
        )
