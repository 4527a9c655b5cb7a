"""What a campaign is: who gets which offer, on which channels, when, how often, at what cost.

The one schema of a campaign, for every caller: the gateway passes the JSON body through and
a wrong field comes back named by its path (`offer.discount_percent: ...`). docs/campaigns.md
describes every field with an example.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from services.common.members import CHANNELS
from services.common.timestamps import Instant

# Pure code shared with profiles, which evaluates audiences: a campaign's audience is
# checked here by the same rules, when it is saved, not on every member's offers later.
from services.profiles.conditions import parse
from services.profiles.segments import check_name

Channel = Literal["onsite", "email", "sms", "push"]
Status = Literal["draft", "active", "paused", "ended"]
CODE = r"^[A-Z0-9][A-Z0-9_-]{2,39}$"
_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")
# Ten years: longer than any voucher a shop honours, and far inside what a datetime (and
# an offer's Timestamp) holds from any clock this side of the year 9989.
MAX_OFFER_DAYS = 3650
assert set(CHANNELS) == {"onsite", "email", "sms", "push"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _segment_name(name: str) -> str:
    problem = check_name(name)
    if problem:
        raise ValueError(problem)
    return name


def _condition(text: str) -> str:
    # Profiles answers an audience it cannot read by refusing the whole offer request, every
    # campaign's: a wrong condition would empty every member's offers until it is fixed.
    if text.strip():
        parse(text)
    return text


SegmentName = Annotated[str, AfterValidator(_segment_name)]


class Audience(_Strict):
    """Members in any of `segments` (every member when none) for whom `condition` holds."""

    segments: list[SegmentName] = Field(default_factory=list, max_length=20)
    condition: Annotated[str, AfterValidator(_condition)] = Field(
        default="", max_length=2000, description="The segment definition language."
    )
    new_visitors: bool = Field(
        default=False,
        description="Also members the fleet has no event of yet (a welcome offer's audience).",
    )


class Tier(_Strict):
    """A level of a tiered offer: members at or above a threshold get its discount."""

    name: str = Field(min_length=1, max_length=40)
    min_m_score: int | None = Field(default=None, ge=1, le=5)
    min_spend: float | None = Field(default=None, ge=0)
    discount_percent: float | None = Field(default=None, gt=0, le=100)
    discount_amount: float | None = Field(default=None, gt=0)
    coupon_code: str | None = Field(default=None, pattern=CODE)

    @model_validator(mode="after")
    def _one_threshold_one_discount(self) -> Tier:
        if (self.min_m_score is None) == (self.min_spend is None):
            raise ValueError("give exactly one of min_m_score and min_spend")
        if (self.discount_percent is None) == (self.discount_amount is None):
            raise ValueError("give exactly one of discount_percent and discount_amount")
        return self

    def reached(self, m_score: int | None, spend: float) -> bool:
        if self.min_m_score is not None:
            return m_score is not None and m_score >= self.min_m_score
        return spend >= (self.min_spend or 0.0)


class OfferTerms(_Strict):
    title: str | None = Field(
        default=None,
        max_length=200,
        description="Shown to the member; made from the discount when unset.",
    )
    description: str | None = Field(default=None, max_length=1000)
    discount_percent: float | None = Field(default=None, gt=0, le=100)
    discount_amount: float | None = Field(default=None, gt=0)
    minimum_spend: float = Field(default=0.0, ge=0)
    coupon: Literal["fixed", "unique"] = Field(
        default="fixed", description="One code for everyone, or a code of their own per member."
    )
    coupon_code: str | None = Field(
        default=None, pattern=CODE, description="The fixed code (upper case letters, digits, - _)."
    )
    code_prefix: str = Field(default="RF", pattern=r"^[A-Z0-9]{1,10}$")
    expires_after_days: float | None = Field(
        default=None,
        gt=0,
        le=MAX_OFFER_DAYS,
        description="A member's offer expires this long after it reaches them.",
    )
    tiers: list[Tier] = Field(default_factory=list, max_length=10)

    @model_validator(mode="after")
    def _priced(self) -> OfferTerms:
        if self.discount_percent is not None and self.discount_amount is not None:
            raise ValueError("give one of discount_percent and discount_amount, not both")
        if not self.tiers and self.discount_percent is None and self.discount_amount is None:
            raise ValueError("give discount_percent or discount_amount (or tiers)")
        if self.coupon == "fixed" and not self.coupon_code and not self._tier_codes():
            raise ValueError("a fixed coupon needs coupon_code")
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError("tier names must differ")
        return self

    def _tier_codes(self) -> bool:
        return bool(self.tiers) and all(t.coupon_code for t in self.tiers)

    def discount(self, tier: Tier | None = None) -> tuple[float | None, float | None]:
        """The percentage and the amount off (one of them None) of the tier, or of the
        offer itself without one."""
        if tier is not None:
            return tier.discount_percent, tier.discount_amount
        return self.discount_percent, self.discount_amount

    def tier_for(self, m_score: int | None, spend: float) -> Tier | None:
        """The most generous tier the member reached; None below every tier (no offer)."""
        reached = [t for t in self.tiers if t.reached(m_score, spend)]
        return max(reached, key=lambda t: (t.min_m_score or 0, t.min_spend or 0.0), default=None)


class QuietHours(_Strict):
    """Local times (the schedule's time zone) when nothing is sent on a channel; may wrap
    midnight (21:00-08:00)."""

    start: time
    end: time

    def holds(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


def _month_day(value: str) -> str:
    match = _MONTH_DAY.match(value)
    if not match:
        raise ValueError("a month and day as MM-DD")
    try:
        date(2024, int(match[1]), int(match[2]))  # a leap year accepts 02-29
    except ValueError:
        raise ValueError(f"{value} is not a day of the year") from None
    return value


MonthDay = Annotated[str, AfterValidator(_month_day)]


class Season(_Strict):
    """A stretch of every year, from `start` to `end` inclusive (MM-DD); may wrap the new
    year (12-01 to 02-28)."""

    start: MonthDay
    end: MonthDay

    def holds(self, day: date) -> bool:
        today = f"{day.month:02d}-{day.day:02d}"
        if self.start <= self.end:
            return self.start <= today <= self.end
        return today >= self.start or today <= self.end


class Schedule(_Strict):
    starts_at: Instant | None = None
    ends_at: Instant | None = None
    timezone: str = "UTC"
    seasons: list[Season] = Field(default_factory=list, max_length=12)
    quiet_hours: dict[Channel, QuietHours] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{value}' (an IANA name)") from None
        return value

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone offset (e.g. 2027-03-01T00:00:00+01:00)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Schedule:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self

    def why_not(self, now: datetime) -> str:
        """Why the campaign may not run at `now`; empty when it may."""
        if self.starts_at and now < self.starts_at:
            return "before its start"
        if self.ends_at and now >= self.ends_at:
            return "past its end"
        local = now.astimezone(ZoneInfo(self.timezone))
        if self.seasons and not any(s.holds(local.date()) for s in self.seasons):
            return "out of season"
        return ""

    def quiet(self, channel: str, now: datetime) -> QuietHours | None:
        hours = self.quiet_hours.get(channel)  # type: ignore[call-overload]
        local = now.astimezone(ZoneInfo(self.timezone))
        return hours if hours is not None and hours.holds(local.time()) else None

    def quiet_until(self, channel: str, now: datetime) -> datetime | None:
        """When the channel's quiet hours end, if it is quiet at `now`."""
        hours = self.quiet(channel, now)
        if hours is None:
            return None
        local = now.astimezone(ZoneInfo(self.timezone))
        ends = datetime.combine(local.date(), hours.end, tzinfo=local.tzinfo)
        if ends <= local:
            ends += timedelta(days=1)
        return ends.astimezone(now.tzinfo)


class FrequencyCap(_Strict):
    """At most `max` exposures per member in any `per_days` days."""

    max: int = Field(ge=1, le=1000)
    per_days: float = Field(gt=0, le=366)


class Budget(_Strict):
    max_redemptions: int | None = Field(default=None, ge=1)
    max_cost: float | None = Field(default=None, gt=0, description="Discounts granted, at most.")


class CampaignDefinition(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]*$")
    description: str = Field(default="", max_length=1000)
    status: Status = "draft"
    audience: Audience = Field(default_factory=Audience)
    offer: OfferTerms
    channels: list[Channel] = Field(min_length=1, max_length=4)
    channel_choice: Literal["all", "best"] = Field(
        default="all",
        description="all: every channel the member consents to; best: only the one they "
        "answered best so far (their preferred channel until they answered any).",
    )
    schedule: Schedule = Field(default_factory=Schedule)
    priority: int = Field(default=0, ge=-100, le=100, description="Higher is offered first.")
    budget: Budget = Field(default_factory=Budget)
    control_share: float = Field(
        default=0.1, ge=0, le=0.5, description="Members held out by hash, to measure uplift."
    )
    frequency_caps: dict[Channel, FrequencyCap] = Field(
        default_factory=dict, description="Per channel, across this campaign's exposures."
    )
    items: list[str] = Field(
        default_factory=list,
        max_length=500,
        description="The campaign's items, for merchandising rules that promote them.",
    )

    @field_validator("channels")
    @classmethod
    def _distinct(cls, value: list[Channel]) -> list[Channel]:
        if len(set(value)) != len(value):
            raise ValueError("each channel once")
        return value

    def title(self, tier: Tier | None = None) -> str:
        if self.offer.title:
            return self.offer.title
        return f"{self.name}: {discount_words(self.offer, tier)}"

    def description_for(self, tier: Tier | None = None) -> str:
        if self.offer.description:
            return self.offer.description
        words = discount_words(self.offer, tier)
        if self.offer.minimum_spend:
            words += f" on orders of {self.offer.minimum_spend:g} or more"
        return words


def discount_words(offer: OfferTerms, tier: Tier | None = None) -> str:
    percent, amount = offer.discount(tier)
    return f"{percent:g}% off" if percent is not None else f"{amount:g} off"


class DefinitionError(ValueError):
    """A definition that is not a campaign; the message names each wrong field."""


def validated(raw: str | bytes | dict[str, object]) -> CampaignDefinition:
    try:
        if isinstance(raw, dict):
            return CampaignDefinition.model_validate(raw)
        return CampaignDefinition.model_validate_json(raw)
    except ValidationError as exc:
        raise DefinitionError(describe(exc)) from None


def describe(error: ValidationError) -> str:
    parts = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "campaign"
        parts.append(f"{where}: {problem['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
