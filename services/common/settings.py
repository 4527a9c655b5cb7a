"""Settings every process shares: where data lives, which bus, where each service listens.

Each service also has its own settings class (env prefix `RECOFLEET_<SERVICE>_`); both are
built once in the service's entry point and passed into constructors, never read at import.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.clock import Clock


class FleetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECOFLEET_", extra="ignore")

    data_dir: Path = Field(
        default=Path("var"), description="Stores, the local event log and trained models."
    )
    bus: Literal["local", "kafka"] = Field(default="local", description="Event bus implementation.")
    bus_partitions: int = Field(default=4, ge=1, le=256, description="Partitions per new topic.")
    bus_fsync: bool = Field(
        default=True, description="fsync the local log before acknowledging a publish."
    )
    bus_retention_hours: float = Field(
        default=168,
        gt=0,
        description="How long the bus keeps records (the local log and new Kafka topics); "
        "older ones are deleted, erased members' events included.",
    )
    processed_retention_hours: float = Field(
        default=336,
        gt=0,
        description="How long stores remember the event ids they applied (idempotency). "
        "Longer than bus_retention_hours, so that every redelivery is still recognised.",
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON object per log line, with the trace, span and "
        "recommendation ids (docs/observability.md); `text`: plain lines.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/gRPC collector receiving the fleet's traces (e.g. "
        "`http://otel-collector:4317`); unset: no tracing.",
    )
    trace_sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of new traces kept; a call inside a kept trace is always kept.",
    )
    pii_secret: SecretStr | None = Field(
        default=None,
        description="Key of the hashes that replace emails and phone numbers (16+ characters).",
    )
    sample_source: Path | None = Field(
        default=None,
        description="Online Retail CSV to load instead of the bundled sample (the full data set).",
    )
    redate: bool = Field(
        default=True,
        description="Loaders shift a historical data set's dates so that its newest event is "
        "now (whole days, times of day kept); `recofleet load-sample --no-redate` keeps them.",
    )
    clock_offset: timedelta = Field(
        default=timedelta(0),
        description="Added to real time to make the fleet's clock (e.g. `-P4750D`), to look "
        "at a data set loaded with --no-redate as of its own dates.",
    )
    # The model store (services/retrieval/model_store.py). S3 credentials come from boto3's
    # own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a web identity, an instance role).
    model_store_kind: Literal["local", "s3"] = Field(
        default="local",
        description="Where trained model versions live: `local` (folders in the data dir, "
        "one machine) or `s3` (an S3-compatible bucket every replica reads).",
    )
    model_store_s3_bucket: str | None = Field(
        default=None, description="The bucket of the s3 model store (required with it)."
    )
    model_store_s3_endpoint: str | None = Field(
        default=None,
        description="URL of an S3-compatible server (MinIO, Ceph, moto); AWS S3 when unset.",
    )
    model_store_s3_region: str | None = Field(
        default=None, description="The bucket's region; boto3's own (AWS_REGION) when unset."
    )
    model_store_s3_prefix: str = Field(
        default="recofleet", description="Key prefix of the fleet's models in the bucket."
    )
    model_store_cache_dir: Path | None = Field(
        default=None,
        description="Where an s3 store's versions are downloaded to be loaded; "
        "data_dir/model-cache when unset.",
    )

    ingestion_addr: str = "127.0.0.1:50051"
    profiles_addr: str = "127.0.0.1:50052"
    retrieval_addr: str = "127.0.0.1:50053"
    ranking_addr: str = "127.0.0.1:50054"
    campaigns_addr: str = "127.0.0.1:50055"
    analytics_addr: str = "127.0.0.1:50056"
    metrics_port_offset: int = Field(
        default=100,
        ge=0,
        le=10000,
        description="Each service serves Prometheus metrics on its gRPC port plus this "
        "(50151 for ingestion ... 50156 for analytics); 0: no metrics endpoint.",
    )
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080

    @model_validator(mode="after")
    def _remember_past_the_bus(self) -> Self:
        if self.processed_retention_hours <= self.bus_retention_hours:
            raise ValueError(
                "processed_retention_hours must be longer than bus_retention_hours: a store "
                "that forgot an event id would apply a redelivered event twice"
            )
        return self

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> Self:
        if self.model_store_kind == "s3" and not self.model_store_s3_bucket:
            raise ValueError(
                "RECOFLEET_MODEL_STORE_KIND=s3 needs RECOFLEET_MODEL_STORE_S3_BUCKET: "
                "the bucket every replica reads the model versions from"
            )
        return self

    def clock(self) -> Clock:
        """The fleet's clock: real time plus `clock_offset`."""
        return Clock(self.clock_offset)

    def sqlite_url(self, name: str) -> str:
        """The embedded default store of one service: a SQLite file in the data dir."""
        return f"sqlite:///{(self.data_dir / f'{name}.db').resolve()}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def model_cache_dir(self) -> Path:
        return self.model_store_cache_dir or self.data_dir / "model-cache"
