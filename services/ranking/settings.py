from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BlendWeights(BaseModel):
    """How much each signal counts in the blend ranker (they need not sum to 1)."""

    relevance: float = Field(default=0.55, ge=0)
    popularity: float = Field(default=0.15, ge=0)
    affinity: float = Field(default=0.30, ge=0)


class Diversity(BaseModel):
    """How a placement's answers are spread over categories."""

    max_per_category: int = Field(
        ge=1, description="At most this many items of one category before the others."
    )


class RankingSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECOFLEET_RANKING_", env_nested_delimiter="__", extra="ignore"
    )

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; a SQLite file in the data dir when unset."
    )
    default_ranker: str = Field(
        default="blend", description="The ranker answers use before any activation."
    )
    blend: BlendWeights = Field(default_factory=BlendWeights)
    diversity: dict[str, Diversity] = Field(
        default_factory=dict,
        description='Per placement, e.g. {"home": {"max_per_category": 3}}; none by default '
        "(a cap trades relevance for variety: measure it in an experiment).",
    )
    refresh_s: float = Field(
        default=0.5,
        gt=0,
        description="How often each replica reads the active ranker and the experiments "
        "again: what another replica activated or started takes effect within it.",
    )
    probe_budget_ms: float = Field(
        default=25.0,
        gt=0,
        description="A ranker slower than this on the probe request (200 candidates) "
        "is refused at activation and at an experiment's start (judged on the median of 80 calls).",
    )
    keep_versions: int = Field(default=5, ge=2, description="Trained versions kept per ranker.")
    train_threads: int = Field(
        default=1,
        ge=1,
        description="LightGBM threads for `recofleet train-ranker`: on 2 busy cores its "
        "threads wait on each other, and one was measured faster than two.",
    )
