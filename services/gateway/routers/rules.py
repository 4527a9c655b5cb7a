"""Merchandising rules: pins, boosts, buries, filters, promotions and exclusions per placement.

Campaigns owns the rules (DESIGN.md): it validates them, keeps them and applies them to
every recommendation list; the gateway checks the key (admin) and shapes the answers
(docs/merchandising.md). A change takes effect within a second on every replica.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from services.gateway.auth import require
from services.gateway.bodies import (
    ACCEPTED,
    check_media_type,
    decode_or_400,
    model_body,
    read_body,
    read_model,
)
from services.gateway.calls import call
from services.gateway.compose import Asked, InvalidDraft, PreviewFailed
from services.gateway.deps import (
    ClientsDep,
    ComposerDep,
    SettingsDep,
    checked_limit,
    stored_member_id,
)
from services.gateway.merch_schemas import PreviewIn, PreviewOut, RuleIn, RuleOut, RulesOut
from services.gateway.responses import errors
from services.gateway.routing import AllowingRoute
from services.gateway.schemas import ItemOut
from services.gen.recofleet.campaigns.v1 import campaigns_pb2

router = APIRouter(prefix="/v1/rules", tags=["rules"], route_class=AllowingRoute)

DEADLINE_S = 5.0
# A rule is a few hundred bytes; a promotion's 500 item ids a few kilobytes.
MAX_RULE_BYTES = 64 * 1024
RuleId = Annotated[
    str, Path(pattern=r"^[0-9A-Za-z._-]+$", max_length=64, description="The rule's id")
]
STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 409,
}
UNAVAILABLE = "Campaigns (which keeps the rules) is unavailable: nothing was changed, retry."
NOT_FOUND = {404: "No rule with that id."}
INVALID = {422: "The rule is invalid: the detail names each wrong field."}
FULL = {409: "The store holds as many rules as it takes: delete some first."}
BODY = model_body(RuleIn, "The rule: `placement`, `action` and the action's fields.")
LINKS = {
    verb: {"operationId": f"{verb}_rule", "parameters": {"rule_id": "$response.body#/rule_id"}}
    for verb in ("get", "put", "delete")
}


async def _call(method: Any, request: Any) -> Any:
    return await call(method, request, timeout=DEADLINE_S, statuses=STATUS, service="campaigns")


async def _definition(request: Request) -> str:
    """The body as JSON text for campaigns to validate: 415, 413 and 400 as for every body."""
    check_media_type(request)
    body = decode_or_400(await read_body(request, MAX_RULE_BYTES, "a JSON object"))
    if not isinstance(body, dict):
        raise HTTPException(422, "body: must be a JSON object")
    return json.dumps(body)


@router.post(
    "",
    operation_id="create_rule",
    dependencies=[require("admin")],
    status_code=201,
    response_model=RuleOut,
    responses={
        201: {"description": "The rule, with its id; it applies within a second.", "links": LINKS},
        **errors(400, 409, 413, 415, 422, 503, descriptions={**INVALID, **FULL, 503: UNAVAILABLE}),
    },
    openapi_extra=BODY,
)
async def create_rule(request: Request, clients: ClientsDep) -> RuleOut:
    """A new rule, e.g. `{"placement": "home", "action": "pin", "item_id": "85123A",
    "position": 1}`: from its `starts_at` (now when unset) to its `ends_at`."""
    message = campaigns_pb2.PutRuleRequest(definition_json=await _definition(request))
    return RuleOut.of(await _call(clients.merchandising.PutRule, message))


@router.post(
    "/preview",
    operation_id="preview_rule",
    dependencies=[require("admin")],
    response_model=PreviewOut,
    responses={
        200: {"description": "The placement's list without and with the draft rule."},
        **errors(
            400,
            413,
            415,
            422,
            503,
            descriptions={
                **INVALID,
                503: "A service the lists need failed or overran: a preview is exact or not "
                "given (the detail names them). Nothing was saved: retry.",
            },
        ),
    },
    openapi_extra={
        "requestBody": {
            **BODY["requestBody"],
            "description": "The placement (and member, item in view) to preview, and the "
            f"draft rule. Content types: {ACCEPTED} (or none).",
            "content": {"application/json": {"schema": PreviewIn.body_schema()}},
        }
    },
)
async def preview_rule(
    request: Request, composer: ComposerDep, settings: SettingsDep
) -> PreviewOut:
    """What a rule would do before it is saved: the same member's list at the placement
    with the rules saved now, and with the draft too, from one set of candidates so that
    they differ by the rule alone. Nothing is saved, and no impression is logged."""
    body = await read_model(request, PreviewIn, MAX_RULE_BYTES)
    member_id = stored_member_id(request, body.member_id) if body.member_id else ""
    asked = Asked(member_id, body.placement, checked_limit(body.limit, settings), body.item_id, [])
    try:
        before, after = await composer.preview(asked, _draft(body))
    except InvalidDraft as exc:
        raise HTTPException(422, f"rule.{exc}") from exc
    except PreviewFailed as exc:
        raise HTTPException(
            503, f"no preview: {exc} did not answer in time; retry", headers={"Retry-After": "1"}
        ) from exc
    return PreviewOut(
        placement=body.placement,
        # As every member route answers: the id as stored (an email is its token).
        member_id=member_id,
        before=[ItemOut.of(item) for item in before.items],
        after=[ItemOut.of(item) for item in after.items],
        model=after.model,
        personalized=after.personalized,
    )


def _draft(body: PreviewIn) -> str:
    """The draft as campaigns takes it, for the placement previewed (422 for another)."""
    placement = body.rule.setdefault("placement", body.placement)
    if placement != body.placement:
        raise HTTPException(
            422,
            f"rule.placement: {placement!r} is not the placement previewed ({body.placement!r})",
        )
    return json.dumps(body.rule)


@router.get(
    "",
    operation_id="list_rules",
    dependencies=[require("admin")],
    response_model=RulesOut,
    responses={
        200: {"description": "Every rule (of the placement, when given), live or not."},
        **errors(422, 503),
    },
)
async def list_rules(
    clients: ClientsDep,
    placement: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> RulesOut:
    request = campaigns_pb2.ListRulesRequest(placement=placement or "")
    reply = await _call(clients.merchandising.ListRules, request)
    return RulesOut(rules=[RuleOut.of(rule) for rule in reply.rules])


@router.get(
    "/{rule_id}",
    operation_id="get_rule",
    dependencies=[require("admin")],
    response_model=RuleOut,
    responses={
        200: {"description": "The rule, and whether it is live now."},
        **errors(404, 422, 503, descriptions=NOT_FOUND),
    },
)
async def get_rule(rule_id: RuleId, clients: ClientsDep) -> RuleOut:
    request = campaigns_pb2.GetRuleRequest(rule_id=rule_id)
    return RuleOut.of(await _call(clients.merchandising.GetRule, request))


@router.put(
    "/{rule_id}",
    operation_id="put_rule",
    dependencies=[require("admin")],
    response_model=RuleOut,
    responses={
        200: {
            "description": "The rule as it is now (created with that id when there was "
            "none); the change applies within a second."
        },
        **errors(400, 409, 413, 415, 422, 503, descriptions={**INVALID, **FULL, 503: UNAVAILABLE}),
    },
    openapi_extra=BODY,
)
async def put_rule(rule_id: RuleId, request: Request, clients: ClientsDep) -> RuleOut:
    """Replace the rule's definition (its id and creation time stay): the whole rule, as
    `definition` of `GET /v1/rules/{rule_id}` shows it."""
    message = campaigns_pb2.PutRuleRequest(
        rule_id=rule_id, definition_json=await _definition(request)
    )
    return RuleOut.of(await _call(clients.merchandising.PutRule, message))


@router.delete(
    "/{rule_id}",
    operation_id="delete_rule",
    dependencies=[require("admin")],
    status_code=204,
    responses={
        204: {"description": "Deleted: it stops applying within a second."},
        **errors(404, 422, 503, descriptions={**NOT_FOUND, 503: UNAVAILABLE}),
    },
)
async def delete_rule(rule_id: RuleId, clients: ClientsDep) -> Response:
    await _call(clients.merchandising.DeleteRule, campaigns_pb2.GetRuleRequest(rule_id=rule_id))
    return Response(status_code=204)
