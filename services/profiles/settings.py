from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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


class ProfilesSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOFLEET_PROFILES_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; a SQLite file in the data dir when unset."
    )
    consumer_group: str = "profiles"
    recent_items: int = Field(default=20, ge=1, le=500, description="Recent items kept per member.")
    category_weights: dict[str, float] = Field(default_factory=default_category_weights)
