from datetime import UTC, datetime

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOFLEET_INGESTION_", extra="ignore")

    max_batch_events: int = Field(default=5000, ge=1, description="Events per request, at most.")
    max_future_skew_s: float = Field(
        default=3600.0,
        ge=0,
        description="How far ahead of the fleet's clock an event's timestamp may be (clock "
        "skew of the sender); later ones are rejected, as they would distort recency.",
    )
    earliest_timestamp: datetime = Field(
        default=datetime(1970, 1, 1, tzinfo=UTC),
        description="Events dated before this are rejected (a zeroed or garbled date).",
    )

    @field_validator("earliest_timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
