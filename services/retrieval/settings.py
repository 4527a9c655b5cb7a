from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The candidate sources retrieval fuses (docs/retrieval.md).
SOURCES = ("als", "buy_again", "bought_together", "similar", "content", "trending")
Source = Literal["als", "buy_again", "bought_together", "similar", "content", "trending"]


def default_event_weights() -> dict[str, float]:
    # How strongly each kind of interaction says "this member wants this item", a purchase
    # being 1. Confidence grows with the log of the sum (`confidence`), so ten views of an
    # item count for less than one purchase of it.
    return {
        "view": 0.1,
        "click": 0.1,
        "wishlist": 0.3,
        "add_to_cart": 0.4,
        "purchase": 1.0,
        "rate": 1.0,
    }


class PlacementMix(BaseModel):
    """Which sources propose candidates for a placement, and how far each is trusted.

    A weight multiplies the source's calibrated hit probability (what training measured on
    held-out data), so 1 means "as measured" and 0 or absence turns a source off.
    """

    model_config = ConfigDict(extra="forbid")

    sources: dict[Source, float] = Field(min_length=1)
    repeat_purchases: bool = Field(
        default=True,
        description="Whether items the member bought may come back (buy again); "
        "off, their purchases are never proposed.",
    )


def default_placements() -> dict[str, PlacementMix]:
    everything: dict[Source, float] = {
        "als": 1.0,
        "buy_again": 1.0,
        "bought_together": 1.0,
        "content": 1.0,
    }
    return {
        "home": PlacementMix(sources=everything | {"trending": 1.0}),
        "email": PlacementMix(sources=everything | {"trending": 1.0}),
        # Seeded by the item in view: its neighbours first, the member's taste after.
        "product": PlacementMix(
            sources={"similar": 1.0, "bought_together": 1.0, "content": 1.0, "als": 0.5}
        ),
        # Seeded by what is in the cart (excluded from the answer): what goes with it.
        "cart": PlacementMix(
            sources={"bought_together": 1.0, "similar": 0.5, "als": 0.5, "buy_again": 0.5}
        ),
    }


class RetrievalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOFLEET_RETRIEVAL_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; a SQLite file in the data dir when unset."
    )
    consumer_group: str = "retrieval"
    event_weights: dict[str, float] = Field(default_factory=default_event_weights)
    # ALS: chosen by the search in docs/evaluation.md (Online Retail, Complete Journey,
    # MovieLens 100k, each on its validation split).
    factors: int = Field(default=64, ge=2, le=1024)
    iterations: int = Field(default=15, ge=1, le=200)
    regularization: float = Field(default=30.0, ge=0)
    alpha: float = Field(default=5.0, gt=0, description="Confidence per unit of `confidence`.")
    confidence: Literal["log", "linear"] = Field(
        default="log",
        description="confidence = 1 + alpha * log(1 + w) or 1 + alpha * w, where w is the "
        "summed event weight of a member and an item.",
    )
    random_seed: int = 7
    trending_days: float = Field(
        default=14.0, gt=0, description="Half-life of an interaction in the trending figures."
    )
    neighbours: int = Field(
        default=50, ge=1, le=1000, description="Bought-together neighbours kept per item."
    )
    calibration_members: int = Field(
        default=2000,
        ge=0,
        description="Members of the held-out tail that training measures the sources on; "
        "0 skips calibration (every source then gets the same prior).",
    )
    exact_search_below: int = Field(
        default=20_000, ge=1, description="Catalogs smaller than this are searched exactly."
    )
    placements: dict[str, PlacementMix] = Field(default_factory=default_placements)
    history_limit: int = Field(
        default=500, ge=1, description="Latest interactions folded in to place a member."
    )
    activity_members: int = Field(
        default=100_000,
        ge=1,
        description="Members whose latest interactions are kept in memory (least recently "
        "asked for go first).",
    )
    answer_cache_size: int = Field(
        default=10_000,
        ge=0,
        description="Answers kept until the member's next event, a catalog change or a new "
        "model (about 6 KiB each with 40 candidates; 0: none kept).",
    )
    answer_cache_ttl_s: float = Field(
        default=60.0, gt=0, description="Longest an answer is kept even when nothing changed."
    )
    reload_interval_s: float = Field(
        default=2.0, gt=0, description="How often to look for a newer model."
    )
    keep_versions: int = Field(default=3, ge=1, description="Trained model versions kept on disk.")
