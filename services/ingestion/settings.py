from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class IngestionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOFLEET_INGESTION_", extra="ignore")

    max_batch_events: int = Field(default=5000, ge=1, description="Events per request, at most.")
