"""The campaigns a shop starts from (the seeds' marketing plans), with sensible defaults.

A body names only what differs: `{"name": "Spring garden"}` and, for the seasonal one, the
category. Nested objects merge key by key, so `{"offer": {"discount_percent": 20}}` keeps the
template's coupon and expiry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.campaigns.model import CampaignDefinition, DefinitionError, validated

WEEKLY_EMAIL = {"email": {"max": 1, "per_days": 7}}


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    defaults: dict[str, Any]
    # Fields a body must give besides `name`, with what they mean.
    required: dict[str, str] = field(default_factory=dict)

    def build(self, body: Mapping[str, Any]) -> CampaignDefinition:
        missing = [f"{key}: {why}" for key, why in self.required.items() if key not in body]
        if missing:
            raise DefinitionError("; ".join(missing))
        merged = _merge(self.defaults, {k: v for k, v in body.items() if k not in self.required})
        if self.name == "seasonal":
            merged = _seasonal(merged, body)
        return validated(merged)


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _seasonal(merged: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    category = body["category"]
    if not isinstance(category, str) or not category.strip() or "'" in category:
        raise DefinitionError("category: a category id (text without quotes)")
    within = body.get("bought_within_days", 365)
    if not isinstance(within, int | float) or isinstance(within, bool) or within <= 0:
        raise DefinitionError("bought_within_days: a positive number of days")
    condition = f"days_since_purchase['{category}'] <= {within:g}"
    audience = dict(merged.get("audience", {}))
    extra = audience.get("condition", "")
    audience["condition"] = f"{condition} and ({extra})" if extra else condition
    merged["audience"] = audience
    return merged


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "welcome",
            "A coupon for a first order, to members who have not ordered yet and to visitors "
            "the shop has not seen before.",
            {
                "status": "active",
                "audience": {"condition": "frequency == 0", "new_visitors": True},
                "offer": {
                    "discount_percent": 10,
                    "coupon": "fixed",
                    "coupon_code": "WELCOME10",
                    "expires_after_days": 30,
                },
                "channels": ["onsite", "email"],
                "frequency_caps": {"email": {"max": 1, "per_days": 30}},
                "priority": 10,
                "control_share": 0.1,
            },
        ),
        Template(
            "spend-tier",
            "Coupons by spend: bronze, silver and gold by the member's M score, a code per "
            "member, by email at most once a week.",
            {
                "status": "active",
                "audience": {"condition": "frequency >= 1"},
                "offer": {
                    "coupon": "unique",
                    "code_prefix": "TIER",
                    "expires_after_days": 14,
                    "tiers": [
                        {"name": "bronze", "min_m_score": 1, "discount_percent": 5},
                        {"name": "silver", "min_m_score": 3, "discount_percent": 10},
                        {"name": "gold", "min_m_score": 5, "discount_percent": 15},
                    ],
                },
                "channels": ["email", "onsite"],
                "frequency_caps": WEEKLY_EMAIL,
                "priority": 5,
            },
        ),
        Template(
            "seasonal",
            "Past buyers of a category get a discount in a season (spring by default), by "
            "email, at most one message a week.",
            {
                "status": "active",
                "offer": {
                    "discount_percent": 15,
                    "coupon": "unique",
                    "code_prefix": "SEASON",
                    "expires_after_days": 21,
                },
                "channels": ["email"],
                "schedule": {"seasons": [{"start": "03-01", "end": "05-31"}]},
                "frequency_caps": WEEKLY_EMAIL,
                "priority": 20,
            },
            required={"category": "the category whose past buyers get the offer"},
        ),
        Template(
            "win-back",
            "At-risk members get a generous code of their own to come back, by email then "
            "their best channel.",
            {
                "status": "active",
                "audience": {"segments": ["at-risk"]},
                "offer": {
                    "discount_percent": 20,
                    "coupon": "unique",
                    "code_prefix": "BACK",
                    "minimum_spend": 30,
                    "expires_after_days": 14,
                },
                "channels": ["email", "push", "sms"],
                "channel_choice": "best",
                "frequency_caps": {
                    "email": {"max": 1, "per_days": 14},
                    "push": {"max": 1, "per_days": 14},
                    "sms": {"max": 1, "per_days": 30},
                },
                "priority": 30,
            },
        ),
        Template(
            "vip",
            "High-value members get a standing perk on site and by email.",
            {
                "status": "active",
                "audience": {"segments": ["high-value"]},
                "offer": {
                    "discount_percent": 10,
                    "coupon": "fixed",
                    "coupon_code": "VIPPERK",
                    "description": "10% off everything, as thanks for being one of our best",
                },
                "channels": ["onsite", "email"],
                "frequency_caps": {"email": {"max": 1, "per_days": 30}},
                "priority": 40,
                "control_share": 0.05,
            },
        ),
    )
}


class UnknownTemplate(KeyError):
    """No template of that name."""


def from_template(name: str, body: Mapping[str, Any]) -> CampaignDefinition:
    template = TEMPLATES.get(name)
    if template is None:
        raise UnknownTemplate(name)
    return template.build(body)
