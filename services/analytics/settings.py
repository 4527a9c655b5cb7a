from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AnalyticsSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECOFLEET_ANALYTICS_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; a SQLite file in the data dir when unset."
    )
    consumer_group: str = "analytics"
    attribution_window_hours: float = Field(
        default=24,
        gt=0,
        le=24 * 90,
        description="A click, add to cart or purchase without a known recommendation_id is "
        "attributed to the latest impression that showed one of its items to the member "
        "within this many hours before it (last touch).",
    )
    pre_period_days: float = Field(
        default=90,
        gt=0,
        le=3650,
        description="CUPED's covariate: each member's spend over this many days before the "
        "experiment started.",
    )
    min_members_per_variant: int = Field(
        default=100,
        ge=1,
        description="A report warns when a variant has fewer members than this: its "
        "intervals are too wide to decide anything.",
    )
    latency_guardrail_tolerance: float = Field(
        default=0.2,
        ge=0,
        le=10,
        description="An experiment's latency_p99_ms guardrail is breached when a variant's "
        "p99 serving latency exceeds the control's by more than this share (0.2: 20%).",
    )
    prune_every_s: float = Field(
        default=600,
        gt=0,
        description="How often the ids of applied events older than the fleet's "
        "processed_retention_hours are forgotten.",
    )
