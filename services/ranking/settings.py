from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BlendWeights(BaseModel):
    """How much each signal counts in the blend ranker (they need not sum to 1)."""

    relevance: float = Field(default=0.55, ge=0)
    popularity: float = Field(default=0.15, ge=0)
    affinity: float = Field(default=0.30, ge=0)


class RankingSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECOFLEET_RANKING_", env_nested_delimiter="__", extra="ignore"
    )

    default_ranker: str = "blend"
    blend: BlendWeights = Field(default_factory=BlendWeights)
