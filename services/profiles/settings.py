from typing import Self

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.profiles.conditions import ConditionError, parse
from services.profiles.tags import check_tag


def default_category_weights() -> dict[str, float]:
    # A purchase says far more about taste than a view; removals and impressions say nothing.
    return {
        "view": 1.0,
        "click": 1.0,
        "wishlist": 2.0,
        "add_to_cart": 3.0,
        "purchase": 5.0,
        "rate": 2.0,
    }


def default_tag_rules() -> dict[str, str]:
    return {
        "vip": "m_score == 5 and f_score >= 4",
        "win-back": "lifecycle in ('at-risk', 'churned') and m_score >= 4",
        "bargain-hunter": "frequency >= 2 and (price_band == 'low' or price_sensitivity >= 0.5)",
    }


class LifecycleSettings(BaseModel):
    """Thresholds of the lifecycle segments (precedence: portrait.lifecycle)."""

    new_days: float = Field(default=30, gt=0, description="First order (or visit) within.")
    at_risk_days: float = Field(default=90, gt=0, description="No order for longer: at-risk.")
    churned_days: float = Field(default=180, gt=0, description="No order for longer: churned.")
    high_value_min_m_score: int = Field(default=5, ge=1, le=5)
    loyal_min_f_score: int = Field(default=4, ge=1, le=5)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.new_days <= self.at_risk_days < self.churned_days:
            raise ValueError("lifecycle needs new_days <= at_risk_days < churned_days")
        return self


class ConsentDefaults(BaseModel):
    """What a member allows until they say otherwise (docs/consent.md)."""

    personalization: bool = Field(
        default=True, description="Portrait-driven recommendations and targeting."
    )
    email: bool = Field(default=False, description="Marketing by email (opt-in by default).")
    sms: bool = Field(default=False, description="Marketing by SMS (opt-in by default).")
    push: bool = Field(default=False, description="Push notifications (opt-in by default).")
    onsite: bool = Field(default=True, description="Offers shown on the shop's own pages.")


class ProfilesSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECOFLEET_PROFILES_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; a SQLite file in the data dir when unset."
    )
    consumer_group: str = "profiles"
    recent_items: int = Field(default=20, ge=1, le=500, description="Recent items kept per member.")
    category_weights: dict[str, float] = Field(default_factory=default_category_weights)
    affinity_half_life_days: float = Field(
        default=90, gt=0, description="Category affinities halve every this many days."
    )
    scoring_window_days: float = Field(
        default=365, gt=0, description="RFM quintiles are over members who ordered within."
    )
    scores_interval_s: float = Field(
        default=3600, gt=0, description="Recompute score boundaries at least this often."
    )
    scores_stale_share: float = Field(
        default=0.1,
        gt=0,
        description="... and as soon as the orders applied since reach this share of the "
        "scored population.",
    )
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    tag_rules: dict[str, str] = Field(
        default_factory=default_tag_rules,
        description="JSON: tag -> condition over portrait fields (docs/portraits.md).",
    )
    max_manual_tags: int = Field(default=100, ge=1, description="Manual tags per member.")
    consent_defaults: ConsentDefaults = Field(default_factory=ConsentDefaults)
    max_segments: int = Field(default=200, ge=1, description="Custom segments a fleet may define.")
    segment_sizes_ttl_s: float = Field(
        default=10,
        ge=0,
        description="GET /v1/segments counts sizes at most this often (one pass over every "
        "member); defining or changing a segment counts it at once.",
    )
    segment_trend_days: int = Field(
        default=30,
        ge=1,
        le=3660,
        description="Days of daily segment sizes kept and shown as each segment's trend.",
    )
    segment_sizes_interval_s: float = Field(
        default=21600,
        ge=0,
        description="The service counts every segment's size this often on its own, so "
        "that the trend has its daily points without anyone listing segments (0: only "
        "when listed).",
    )

    @field_validator("tag_rules")
    @classmethod
    def _rules_parse(cls, rules: dict[str, str]) -> dict[str, str]:
        for tag, rule in rules.items():
            problem = check_tag(tag)
            if problem:
                raise ValueError(f"tag rule {tag!r}: {problem}")
            try:
                parse(rule)
            except ConditionError as exc:
                raise ValueError(f"tag rule {tag!r}: {exc}") from None
        return rules
