"""What the gateway's merchandising routes take and answer (docs/merchandising.md).

Campaigns validates a rule (services/campaigns/merchandising.py), once for every caller:
`RuleIn` only documents the body, every action's fields in one flat object, and the
gateway passes the JSON object on as it came. A test keeps the two lists of fields equal.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field

from services.gateway.schemas import ItemOut, Placement
from services.gen.recofleet.campaigns.v1 import campaigns_pb2

Action = Literal["pin", "boost", "bury", "filter", "promote", "exclude_bought"]
OneOrMore = str | list[str]


class RuleIn(BaseModel):
    """A merchandising rule: `action` says which of the other fields it takes."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"placement": "home", "action": "pin", "item_id": "85123A", "position": 1},
                {
                    "name": "garden-week",
                    "placement": "home",
                    "action": "boost",
                    "category": "garden",
                    "strength": 0.5,
                    "starts_at": "2026-12-07T00:00:00Z",
                    "ends_at": "2026-12-14T00:00:00Z",
                },
            ]
        },
    )

    placement: str = Field(description="home, product, cart, email, ...")
    action: Action
    name: str | None = Field(
        default=None, description="Named in the reasons of the items it moves; none: its id."
    )
    priority: int = Field(
        default=0, description="-1000..1000; where rules disagree, the higher wins."
    )
    starts_at: datetime | None = Field(default=None, description="None: live from now.")
    ends_at: datetime | None = Field(default=None, description="None: live until deleted.")
    item_id: str | None = Field(default=None, description="pin: the item held.")
    position: int | None = Field(default=None, description="pin: 1 (the first) to 100.")
    category: OneOrMore | None = Field(
        default=None, description="boost, bury, filter, promote: any of these categories."
    )
    tag: OneOrMore | None = Field(default=None, description="... items with any of these tags.")
    brand: OneOrMore | None = Field(default=None, description="... of any of these brands.")
    min_price: float | None = Field(default=None, description="... priced at least this.")
    max_price: float | None = Field(default=None, description="... priced at most this.")
    strength: float | None = Field(
        default=None,
        description="boost, bury: in rank space, 1 moves a matching item past every item no "
        "rule moves; 0.5 (the default) about half the list; at most 10.",
    )
    in_stock: bool | None = Field(
        default=None, description="filter: `true` keeps only items the catalog has in stock."
    )
    campaign_id: str | None = Field(default=None, description="promote: the campaign.")
    campaign_name: str | None = Field(
        default=None, description="promote: shown as 'in campaign <name>'; none: its id."
    )
    item_ids: list[str] | None = Field(
        default=None, description="promote: the campaign's items (or a selector instead)."
    )
    share: float | None = Field(
        default=None, description="promote: of the list's slots (0 to 1), rounded up."
    )
    days: int | None = Field(
        default=None, description="exclude_bought: leave out what was bought this recently."
    )


class RuleOut(BaseModel):
    rule_id: str
    name: str
    placement: str
    # Text, not `Action`: a newer campaigns may know more actions than this gateway.
    action: str = Field(examples=["pin"])
    priority: int
    starts_at: datetime | None
    ends_at: datetime | None
    live: bool = Field(description="Whether its time window holds now.")
    created_at: datetime | None
    updated_at: datetime | None
    definition: dict[str, Any] = Field(
        description="The whole rule, defaults filled in: what `PUT /v1/rules/{rule_id}` takes."
    )

    @classmethod
    def of(cls, rule: campaigns_pb2.Rule) -> RuleOut:
        definition = json.loads(rule.definition_json)
        return cls(
            rule_id=rule.rule_id,
            name=definition.get("name") or rule.rule_id,
            placement=definition.get("placement", ""),
            action=definition.get("action", ""),
            priority=definition.get("priority", 0),
            starts_at=definition.get("starts_at"),
            ends_at=definition.get("ends_at"),
            live=rule.live,
            created_at=_instant(rule.created_at),
            updated_at=_instant(rule.updated_at),
            definition=definition,
        )


class RulesOut(BaseModel):
    rules: list[RuleOut] = Field(description="Oldest first.")


class PreviewIn(BaseModel):
    """A placement's answer to preview, and the rule to preview on it (not saved)."""

    model_config = ConfigDict(extra="forbid")

    placement: Placement
    member_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Whose answer; none: what any visitor gets (no member's data).",
    )
    item_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="The item in view (product pages) or in the cart: the placement's "
        "sources start from it, and it is never recommended.",
    )
    limit: int = Field(default=10, ge=1, description="Items in each list, as `limit` of an answer.")
    rule: dict[str, Any] = Field(
        description="The draft rule: the body `POST /v1/rules` takes (its `placement` may be "
        "left out: the one previewed)."
    )

    @classmethod
    def body_schema(cls) -> dict[str, Any]:
        """The document's schema: `rule` as RuleIn says it (campaigns validates it)."""
        schema = cls.model_json_schema()
        rule = RuleIn.model_json_schema()
        rule["required"] = [name for name in rule["required"] if name != "placement"]
        rule["description"] = schema["properties"]["rule"]["description"]
        schema["properties"]["rule"] = rule
        return schema


class PreviewOut(BaseModel):
    placement: str
    member_id: str | None
    before: list[ItemOut] = Field(description="The answer with the rules saved now.")
    after: list[ItemOut] = Field(
        description="The same answer with the draft rule too, as if saved now and live "
        "(whatever its `starts_at` and `ends_at`): the items it moves name it in their reasons."
    )
    model: str = Field(description="What ranked both lists.")
    personalized: bool = Field(
        description="False when no member's data shaped the lists (no member, or one who "
        "withdrew personalization consent)."
    )


class CatalogItemOut(BaseModel):
    item_id: str
    name: str | None
    category: str | None
    price: float | None
    in_stock: bool
    tags: list[str]
    brand: str | None
    attributes: dict[str, str] = Field(description="As text (a number as its JSON).")

    @classmethod
    def of(cls, item: campaigns_pb2.CatalogItem) -> CatalogItemOut:
        return cls(
            item_id=item.item_id,
            name=item.name or None,
            category=item.category or None,
            price=item.price if item.HasField("price") else None,
            in_stock=item.in_stock,
            tags=list(item.tags),
            brand=item.brand or None,
            attributes=dict(item.attributes),
        )


def _instant(stamp: Timestamp) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if stamp.seconds or stamp.nanos else None
