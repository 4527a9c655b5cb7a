from typing import Any

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.campaigns.merchandising import MerchandisingSettings
from services.campaigns.model import Channel, FrequencyCap


def _welcome_channels() -> list[Channel]:
    return ["onsite", "email"]


class WelcomeOffer(BaseModel):
    """The welcome campaign (id `welcome`) every start makes from the `welcome` template:
    members who have not ordered yet, and visitors not seen before. Its terms follow these
    settings; pause it or change its status through the API as any other campaign."""

    enabled: bool = True
    coupon_code: str = Field(default="WELCOME10", pattern=r"^[A-Z0-9][A-Z0-9_-]{2,39}$")
    discount_percent: float = Field(default=10.0, gt=0, le=100)
    title: str | None = Field(
        default=None,
        max_length=200,
        description="Shown to the member; when unset, made from the discount "
        "('Welcome: 10% off your first order').",
    )
    channels: list[Channel] = Field(default_factory=_welcome_channels, min_length=1)

    def wording(self) -> str:
        return self.title or f"Welcome: {self.discount_percent:g}% off your first order"

    def body(self) -> dict[str, Any]:
        """What the welcome campaign takes from these settings over the template."""
        return {
            "name": "Welcome",
            "offer": {
                "coupon_code": self.coupon_code,
                "discount_percent": self.discount_percent,
                "title": self.wording(),
                "description": f"{self.discount_percent:g}% off a first order",
            },
            "channels": list(self.channels),
        }


def _default_global_caps() -> dict[Channel, FrequencyCap]:
    return {
        "email": FrequencyCap(max=3, per_days=7),
        "sms": FrequencyCap(max=2, per_days=7),
        "push": FrequencyCap(max=3, per_days=7),
    }


class CampaignsSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECOFLEET_CAMPAIGNS_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; a SQLite file in the data dir when unset."
    )
    consumer_group: str = "campaigns"
    redemptions_group: str = Field(
        default="campaigns-redemptions",
        description="Consumer group reading purchases (for redemptions) and member commands.",
    )
    stock_refresh_s: float = Field(
        default=1.0,
        gt=0,
        description="How often stock is read again from the store, for what other replicas "
        "of campaigns applied from the catalog topic.",
    )
    campaigns_refresh_s: float = Field(
        default=0.5,
        gt=0,
        description="How often campaigns and their spending are read again from the store, "
        "for what other replicas changed.",
    )
    global_caps: dict[Channel, FrequencyCap] = Field(
        default_factory=_default_global_caps,
        description="Per channel, at most so many exposures per member across all campaigns "
        "(onsite is uncapped unless set).",
    )
    profiles_deadline_s: float = Field(
        default=0.5,
        gt=0,
        description="For one member's portrait (offers); counting or paging an audience gets "
        "sixty times as long.",
    )
    analytics_deadline_s: float = Field(default=10.0, gt=0, description="For a report.")
    outcome_window_days: float = Field(
        default=30, gt=0, description="Purchases count for a campaign this long after exposure."
    )
    welcome: WelcomeOffer = Field(default_factory=WelcomeOffer)
    merchandising: MerchandisingSettings = Field(default_factory=MerchandisingSettings)
