from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_event_weights() -> dict[str, float]:
    # How strongly each kind of interaction says "this member wants this item".
    return {
        "view": 1.0,
        "click": 1.0,
        "wishlist": 3.0,
        "add_to_cart": 4.0,
        "purchase": 10.0,
        "rate": 3.0,
    }


class RetrievalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOFLEET_RETRIEVAL_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; a SQLite file in the data dir when unset."
    )
    consumer_group: str = "retrieval"
    event_weights: dict[str, float] = Field(default_factory=default_event_weights)
    factors: int = Field(default=48, ge=2, le=1024)
    iterations: int = Field(default=15, ge=1, le=200)
    regularization: float = Field(default=0.05, ge=0)
    alpha: float = Field(default=2.0, gt=0)
    random_seed: int = 7
    history_limit: int = Field(
        default=500, ge=1, description="Latest interactions folded in to place a member."
    )
    reload_interval_s: float = Field(
        default=2.0, gt=0, description="How often to look for a newer model."
    )
    keep_versions: int = Field(default=3, ge=1, description="Trained model versions kept on disk.")
