"""What the shop asks about a member: recommendations, profile, offers."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated

import grpc
from fastapi import APIRouter, HTTPException, Path, Query, Request

from services.gateway.auth import require
from services.gateway.bodies import model_body, read_model
from services.gateway.compose import personalizable
from services.gateway.deps import (
    ClientsDep,
    ComposerDep,
    MemberId,
    SettingsDep,
    TrafficDep,
    checked_limit,
)
from services.gateway.responses import errors, similar_items_link
from services.gateway.routing import AllowingRoute
from services.gateway.schemas import (
    ConsentIn,
    ConsentOut,
    ErasureOut,
    MemberConsentOut,
    MemberSegmentsOut,
    MemberTagsOut,
    OfferOut,
    OffersOut,
    Placement,
    ProfileOut,
    RecommendationsOut,
    lifecycle_of,
)
from services.gen.recofleet.campaigns.v1 import campaigns_pb2
from services.gen.recofleet.ingestion.v1 import ingestion_pb2
from services.gen.recofleet.profiles.v1 import profiles_pb2
from services.profiles.tags import TAG_PATTERN

router = APIRouter(prefix="/v1/members", tags=["members"], route_class=AllowingRoute)


# OpenAPI links: what one answer lets a client ask next (schemathesis follows them too).
MEMBER_LINKS = {
    "recommendations": {
        "operationId": "get_recommendations",
        "parameters": {"member_id": "$response.body#/member_id"},
    },
    "profile": {
        "operationId": "get_profile",
        "parameters": {"member_id": "$response.body#/member_id"},
    },
    "offers": {
        "operationId": "get_offers",
        "parameters": {"member_id": "$response.body#/member_id"},
    },
}
INVALID_PARAMETER = {422: "A query or path parameter is invalid (`limit` past the maximum, too)."}
# What reading a member's portrait can answer besides 200, for each route that reads it.
PORTRAIT_ERRORS = errors(
    404,
    422,
    503,
    descriptions={
        404: "No events seen for this member.",
        503: "The profiles service is unavailable: retry.",
    },
)


def _exclusions(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


@router.get(
    "/{member_id}/recommendations",
    operation_id="get_recommendations",
    dependencies=[require("recommendations:read")],
    response_model=RecommendationsOut,
    responses={
        200: {
            "description": "Recommended items, best first; `degraded` when a service the "
            "answer needed was slow or down (popular items, local filters instead).",
            "links": {
                "similar": similar_items_link("/items/0/item_id"),
                "profile": MEMBER_LINKS["profile"],
            },
        },
        **errors(422, descriptions=INVALID_PARAMETER),
    },
)
async def recommendations(
    member_id: MemberId,
    composer: ComposerDep,
    settings: SettingsDep,
    traffic: TrafficDep,
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
    traffic.served(degraded=rec.degraded)
    return RecommendationsOut.of(rec)


@router.get(
    "/{member_id}/profile",
    operation_id="get_profile",
    dependencies=[require("profiles:read")],
    response_model=ProfileOut,
    responses={
        200: {
            "description": "The member's profile.",
            "links": {
                "recommendations": MEMBER_LINKS["recommendations"],
                "offers": MEMBER_LINKS["offers"],
                "similar": similar_items_link("/recent_items/0/item_id"),
            },
        },
        **PORTRAIT_ERRORS,
    },
)
async def profile(member_id: MemberId, composer: ComposerDep) -> ProfileOut:
    try:
        found = await composer.profile(member_id)
    except grpc.aio.AioRpcError as exc:
        raise _profiles_unavailable(exc) from exc
    if not found.known:
        raise HTTPException(404, f"no events seen for member '{member_id}'")
    return ProfileOut.of(found)


@router.get(
    "/{member_id}/segments",
    operation_id="get_member_segments",
    dependencies=[require("profiles:read")],
    response_model=MemberSegmentsOut,
    responses={
        200: {
            "description": "The segments the member is in now.",
            "links": {"profile": MEMBER_LINKS["profile"]},
        },
        **PORTRAIT_ERRORS,
    },
)
async def member_segments(member_id: MemberId, composer: ComposerDep) -> MemberSegmentsOut:
    """The profile's `segments` alone: lifecycle and defined segments, from the portrait's
    smaller view (no purchases, no recent items)."""
    try:
        found = await composer.profile(member_id, view=profiles_pb2.PROFILE_VIEW_BASIC)
    except grpc.aio.AioRpcError as exc:
        raise _profiles_unavailable(exc) from exc
    if not found.known:
        raise HTTPException(404, f"no events seen for member '{member_id}'")
    return MemberSegmentsOut(
        member_id=member_id,
        segments=list(found.segments),
        lifecycle=lifecycle_of(found.lifecycle),
        personalized=personalizable(found),
    )


@router.get(
    "/{member_id}/offers",
    operation_id="get_offers",
    dependencies=[require("recommendations:read")],
    response_model=OffersOut,
    responses={
        200: {
            "description": "The offers the member is eligible for; `degraded` (and none) "
            "when the profile or campaigns could not be asked.",
            "links": {"profile": MEMBER_LINKS["profile"]},
        },
        **errors(422),
    },
)
async def offers(
    member_id: MemberId,
    clients: ClientsDep,
    settings: SettingsDep,
    channel: Annotated[
        str | None,
        Query(
            max_length=32,
            description="email, sms, push or onsite (any other value, such as web or app, is "
            "onsite); none: every channel the member may be reached on.",
        ),
    ] = None,
    preview: Annotated[
        bool, Query(description="Record no exposure (a console's look); caps still hold.")
    ] = False,
) -> OffersOut:
    """Best first. Each offer returned counts as shown to the member (an exposure, against
    the frequency caps), unless `preview`; a member in a campaign's control group gets
    none of that campaign. Nothing without the member's consent to personalization and to
    the channel."""
    wanted = offer_channel(channel)
    try:
        reply = await clients.campaigns.GetOffers(
            campaigns_pb2.GetOffersRequest(member_id=member_id, channel=wanted, preview=preview),
            timeout=settings.deadlines.offers,
        )
    except grpc.aio.AioRpcError:
        # Without campaigns (or the portrait it asks profiles for) no offer can be vouched
        # for; say so, don't fail.
        return OffersOut(member_id=member_id, channel=channel, offers=[], degraded=True)
    return OffersOut(
        member_id=member_id,
        channel=channel,
        offers=[OfferOut.of(o) for o in reply.offers],
        degraded=False,
    )


def offer_channel(channel: str | None) -> str:
    """The campaigns channel a shop's channel name means: email, sms and push are
    themselves, anything else is onsite; none is every channel."""
    if not channel:
        return ""
    return channel if channel in ("email", "sms", "push") else "onsite"


# Manual tags: set and removed by the shop's marketers; rule tags come from configuration.
Tag = Annotated[
    str,
    Path(
        pattern=TAG_PATTERN,
        max_length=64,
        description="1 to 64 lower-case letters, digits, '-' or '_', starting with a letter "
        "or digit.",
    ),
]
TAG_ERRORS = errors(
    404,
    409,
    422,
    503,
    descriptions={
        404: "No events seen for this member.",
        409: "The member has as many manual tags as allowed "
        "(`RECOFLEET_PROFILES_MAX_MANUAL_TAGS`).",
        422: "The member id or the tag name is invalid.",
        503: "The profiles service is unavailable: nothing was changed, retry.",
    },
)
TAGS_ANSWER = {
    "description": "The member's manual tags after the change.",
    "links": {
        "profile": MEMBER_LINKS["profile"],
        "remove": {
            "operationId": "remove_manual_tag",
            "parameters": {"member_id": "$response.body#/member_id", "tag": "$request.path.tag"},
        },
    },
}


tag_routes = APIRouter(route_class=AllowingRoute)


@tag_routes.put(
    "/{member_id}/tags/{tag}",
    operation_id="set_manual_tag",
    dependencies=[require("segments:write")],
    response_model=MemberTagsOut,
    responses={200: TAGS_ANSWER, **TAG_ERRORS},
)
async def set_manual_tag(member_id: MemberId, tag: Tag, composer: ComposerDep) -> MemberTagsOut:
    """Tag a member by hand (again: nothing changes). The tag shows in the profile's `tags`
    with `source: manual` until it is removed."""
    return await _manual_tag(composer, member_id, tag, present=True)


@tag_routes.delete(
    "/{member_id}/tags/{tag}",
    operation_id="remove_manual_tag",
    dependencies=[require("segments:write")],
    response_model=MemberTagsOut,
    responses={200: TAGS_ANSWER, **TAG_ERRORS},
)
async def remove_manual_tag(member_id: MemberId, tag: Tag, composer: ComposerDep) -> MemberTagsOut:
    """Remove a manual tag (one not set is fine); rule tags are not removed this way."""
    return await _manual_tag(composer, member_id, tag, present=False)


router.include_router(tag_routes)


@router.put(
    "/{member_id}/consent",
    operation_id="set_consent",
    dependencies=[require("events:write")],
    response_model=MemberConsentOut,
    responses={
        200: {
            "description": "The member's consent after the change (defaults filled in); "
            "it holds for every answer from now on.",
            "links": {"profile": MEMBER_LINKS["profile"]},
        },
        **errors(
            400,
            413,
            415,
            422,
            503,
            descriptions={
                422: "An unknown key, a value that is not true or false, or no key at all.",
                503: "The profiles service is unavailable: nothing was changed, retry.",
            },
        ),
    },
    openapi_extra=model_body(
        ConsentIn,
        'Only the keys sent change, e.g. `{"personalization": false, "email": true}`.',
    ),
)
async def set_consent(
    member_id: MemberId, request: Request, clients: ClientsDep, settings: SettingsDep
) -> MemberConsentOut:
    """Record what the member allows (a member not seen yet too: a visitor may choose
    before any event). Without personalization the member gets non-personalized
    recommendations and is in no segment; without a channel, in no export for it."""
    body = await read_model(request, ConsentIn)
    changes = body.changes()
    if not changes:
        raise HTTPException(
            422, "body: give one or more of personalization, email, sms, push, onsite"
        )
    try:
        reply = await clients.profiles.SetConsent(
            profiles_pb2.SetConsentRequest(member_id=member_id, changes=changes),
            timeout=settings.deadlines.profiles,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise HTTPException(422, exc.details()) from exc
        raise _profiles_unavailable(exc) from exc
    return MemberConsentOut(member_id=reply.member_id, consent=ConsentOut.of(reply.consent))


@router.delete(
    "/{member_id}",
    operation_id="erase_member",
    dependencies=[require("admin")],
    status_code=202,
    response_model=ErasureOut,
    responses={
        202: {
            "description": "Erasure accepted: every service removes the member (portrait, "
            "events, interactions, identity links, anything keyed by them) within seconds, "
            "and never applies their earlier events again (docs/erasure.md)."
        },
        **errors(
            422,
            503,
            descriptions={503: "The bus cannot take the erasure now: nothing was done, retry."},
        ),
    },
)
async def erase_member(
    member_id: MemberId, clients: ClientsDep, settings: SettingsDep
) -> ErasureOut:
    """Forget the member everywhere. Answers at once; the audit entries each service keeps
    name the erasure id and hold no personal data."""
    try:
        reply = await clients.ingestion.EraseMember(
            ingestion_pb2.EraseMemberRequest(member_id=member_id),
            timeout=settings.deadlines.ingestion,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise HTTPException(422, exc.details()) from exc
        raise HTTPException(
            503, f"erasure not accepted ({exc.code().name}); retry", headers={"Retry-After": "1"}
        ) from exc
    return ErasureOut(
        member_id=member_id,
        erasure_id=reply.erasure_id,
        requested_at=reply.requested_at.ToDatetime(tzinfo=UTC),
        status="accepted",
    )


async def _manual_tag(
    composer: ComposerDep, member_id: str, tag: str, *, present: bool
) -> MemberTagsOut:
    try:
        reply = await composer.manual_tag(member_id, tag, present=present)
    except grpc.aio.AioRpcError as exc:
        status = {
            grpc.StatusCode.NOT_FOUND: 404,
            grpc.StatusCode.RESOURCE_EXHAUSTED: 409,
            grpc.StatusCode.INVALID_ARGUMENT: 422,
        }.get(exc.code())
        if status is None:
            raise _profiles_unavailable(exc) from exc
        raise HTTPException(status, exc.details() or exc.code().name) from exc
    return MemberTagsOut.of(reply)


def _profiles_unavailable(exc: grpc.aio.AioRpcError) -> HTTPException:
    return HTTPException(
        503, f"profiles unavailable ({exc.code().name}); retry", headers={"Retry-After": "1"}
    )
