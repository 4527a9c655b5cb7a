"""Settings read only their own prefixed environment variables."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from services.campaigns.settings import CampaignsSettings
from services.common.bus.kafka import KafkaSettings
from services.common.settings import FleetSettings
from services.gateway.settings import GatewaySettings
from services.ingestion.settings import IngestionSettings
from services.profiles.settings import ProfilesSettings
from services.ranking.settings import RankingSettings
from services.retrieval.settings import RetrievalSettings

EVERY_SETTINGS = (
    CampaignsSettings,
    FleetSettings,
    GatewaySettings,
    IngestionSettings,
    KafkaSettings,
    ProfilesSettings,
    RankingSettings,
    RetrievalSettings,
)


def _nested_models(settings: type[BaseSettings]) -> list[type[BaseModel]]:
    found = []
    for field in settings.model_fields.values():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            found.append(kind)
    return found


@pytest.mark.parametrize("settings", EVERY_SETTINGS, ids=lambda s: s.__name__)
def test_no_nested_settings_reads_the_environment_on_its_own(settings: type[BaseSettings]):
    # A nested BaseSettings reads unprefixed variables: PROFILES=9 would change a deadline.
    for nested in _nested_models(settings):
        assert not issubclass(nested, BaseSettings), f"{settings.__name__}: {nested.__name__}"


def test_unrelated_variables_change_nothing(monkeypatch: pytest.MonkeyPatch):
    for name, value in {
        "PROFILES": "9",
        "RETRIEVAL": "9",
        "RELEVANCE": "9",
        "ENABLED": "false",
        "COUPON_CODE": "FREEBIE",
        "DISCOUNT_PERCENT": "90",
    }.items():
        monkeypatch.setenv(name, value)
    assert GatewaySettings().deadlines.profiles == 0.25
    assert GatewaySettings().deadlines.retrieval == 0.4
    assert RankingSettings().blend.relevance == 0.55
    welcome = CampaignsSettings().welcome
    assert (welcome.enabled, welcome.coupon_code, welcome.discount_percent) == (
        True,
        "WELCOME10",
        10.0,
    )


def test_prefixed_nested_variables_still_apply(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RECOFLEET_GATEWAY_DEADLINES__PROFILES", "0.5")
    monkeypatch.setenv("RECOFLEET_RANKING_BLEND__RELEVANCE", "0.9")
    monkeypatch.setenv("RECOFLEET_CAMPAIGNS_WELCOME__COUPON_CODE", "HELLO5")
    assert GatewaySettings().deadlines.profiles == 0.5
    assert RankingSettings().blend.relevance == 0.9
    assert CampaignsSettings().welcome.coupon_code == "HELLO5"
