import ipaddress

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.grpc_server import MAX_MESSAGE_BYTES
from services.gateway.access_keys import check_admin_key


class Deadlines(BaseModel):
    """Per-call budgets in seconds; a call that overruns is abandoned and the answer degrades."""

    profiles: float = Field(default=0.25, gt=0)
    retrieval: float = Field(default=0.4, gt=0)
    ranking: float = Field(default=0.25, gt=0)
    campaigns: float = Field(default=0.25, gt=0)
    # Offers: campaigns asks profiles for the member's portrait, then records exposures.
    offers: float = Field(default=1.0, gt=0)
    ingestion: float = Field(default=5.0, gt=0)
    # Counting a segment reads every member: seconds on a large store, not a hot path.
    segments: float = Field(default=120.0, gt=0)


class Breakers(BaseModel):
    """When the gateway stops waiting on a failing service, and how it notices it is back."""

    failures: int = Field(
        default=5, ge=1, description="Failed or overrun calls in a row that open a breaker."
    )
    probe_interval_s: float = Field(
        default=1.0, gt=0, description="How often an open breaker health-checks its service."
    )
    probe_timeout_s: float = Field(default=0.5, gt=0)


class ImpressionSettings(BaseModel):
    enabled: bool = Field(default=True, description="Log every recommendation answer.")
    batch_size: int = Field(default=500, ge=1, le=5000, description="Impressions per send.")
    flush_interval_s: float = Field(
        default=0.2, gt=0, description="The longest an impression waits in memory."
    )
    max_queued: int = Field(
        default=50_000,
        ge=1,
        description="Impressions kept while ingestion cannot take them; past it, new ones "
        'are dropped (recofleet_gateway_impressions_total{outcome="dropped"}).',
    )
    publish_timeout_s: float = Field(default=2.0, gt=0)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECOFLEET_GATEWAY_",
        env_nested_delimiter="__",
        extra="ignore",
        populate_by_name=True,
    )

    deadlines: Deadlines = Field(default_factory=Deadlines)
    recommend_budget_s: float = Field(
        default=0.3,
        gt=0,
        description="The whole time a recommendation may take: every downstream call fits in "
        "what is left of it, and what does not fit degrades the answer.",
    )
    breakers: Breakers = Field(default_factory=Breakers)
    max_in_flight: int = Field(
        default=64,
        ge=1,
        description="Recommendation requests composed at once; past it, an answer degrades at "
        "once to the popular items instead of queueing.",
    )
    candidate_factor: int = Field(
        default=4, ge=1, description="Candidates fetched per item asked, to survive the rules."
    )
    impressions: ImpressionSettings = Field(default_factory=ImpressionSettings)
    ranking_recent_items: int = Field(
        default=20,
        ge=0,
        le=200,
        description="The member's latest items passed to the ranker (the learned ranker's "
        "co-view, co-buy and seen-recently features read them).",
    )
    max_limit: int = Field(default=100, ge=1)
    max_body_bytes: int = Field(
        default=5_000_000,
        ge=1024,
        # A body travels to ingestion in one gRPC message, with room for its envelope.
        le=MAX_MESSAGE_BYTES - 64 * 1024,
        description="Largest request body, in bytes.",
    )
    body_idle_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A request body that stops arriving for this long is refused (408).",
    )
    max_connections: int = Field(
        default=2000,
        ge=1,
        description="Connections and requests in progress the gateway takes at once; past "
        "it, new ones get 503 at once instead of queueing without bound.",
    )
    rate_limit_per_s: float = Field(
        default=500.0, ge=0, description="Ingestion requests per second per key (0: no limit)."
    )
    rate_limit_burst: int = Field(
        default=1000, ge=1, description="Requests a key may send at once."
    )
    segment_write_key: SecretStr | None = Field(
        default=None,
        validation_alias="RECOFLEET_SEGMENT_WRITE_KEY",
        description="Write key Segment-shaped requests must carry (basic auth user); unset: off.",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias="RECOFLEET_ADMIN_KEY",
        description="An admin access key made sure of at start (32+ random characters); unset: "
        "`recofleet run` makes one on a new install and shows it once.",
    )
    database_url: str | None = Field(
        default=None,
        description="Where access keys are kept (e.g. postgresql+psycopg://...); unset: "
        "the SQLite file gateway.db in the data dir.",
    )
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated addresses or networks (CIDR) of the proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed; '*' for any; empty: none, the "
        "client is the TCP peer.",
    )
    popular_refresh_s: float = Field(
        default=60.0, gt=0, description="How often the fallback list of popular items refreshes."
    )

    @field_validator("admin_key")
    @classmethod
    def _admin_key_is_a_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_admin_key(value.get_secret_value())
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, value: str) -> str:
        for entry in _entries(value):
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(
                    f"'{entry}' is not an IP address, a network (CIDR) or '*'"
                ) from exc
        return value

    @property
    def trusted_proxy_list(self) -> list[str]:
        """The proxies uvicorn believes the forwarding headers of (empty: none)."""
        return _entries(self.trusted_proxies)


def _entries(value: str) -> list[str]:
    return [entry.strip() for entry in value.split(",") if entry.strip()]
