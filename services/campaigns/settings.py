from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WelcomeOffer(BaseModel):
    """The offer every member who has not ordered yet is eligible for."""

    enabled: bool = True
    coupon_code: str = "WELCOME10"
    discount_percent: float = Field(default=10.0, gt=0, le=100)
    title: str = "Welcome: 10% off your first order"
    channels: list[str] = Field(default_factory=lambda: ["web", "app", "email"])


class CampaignsSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECOFLEET_CAMPAIGNS_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; a SQLite file in the data dir when unset."
    )
    consumer_group: str = "campaigns"
    stock_refresh_s: float = Field(
        default=1.0,
        gt=0,
        description="How often stock is read again from the store, for what other replicas "
        "of campaigns applied from the catalog topic.",
    )
    welcome: WelcomeOffer = Field(default_factory=WelcomeOffer)
