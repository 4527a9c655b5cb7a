"""The Grafana dashboard and the chart's alert rules read metrics the fleet really exports,
with expressions Prometheus can parse."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client import REGISTRY

import services.common.metrics
import services.gateway.app
import services.gateway.compose
import services.gateway.impressions
import services.gateway.resilience  # noqa: F401  (each module registers its metrics)
from tests.unit.test_chart import chart, documents, minimum, render  # noqa: F401

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "recofleet-dashboard.json"
METRIC = re.compile(r"\b(recofleet_[a-z_]+|up)\b")
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$namespace": "recofleet"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> set[str]:
    names = {"up"}  # Prometheus's own, per scraped target
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            query = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                query = query.replace(variable, value)
            yield panel["title"], query


def check(where: str, query: str, known: set[str]) -> None:
    try:
        promql_parser.parse(query)
    except ValueError as exc:
        pytest.fail(f"{where}: Prometheus cannot parse {query!r}: {exc}")
    unknown = set(METRIC.findall(query)) - known
    assert not unknown, f"{where} reads metrics nothing exports: {sorted(unknown)}"


def test_dashboard_queries_parse_and_read_exported_metrics(dashboard: dict[str, Any]) -> None:
    known = exported()
    queries = list(dashboard_queries(dashboard))
    assert len(queries) >= 10
    for title, query in queries:
        check(f"panel {title!r}", query, known)


def test_dashboard_shows_every_metric_the_fleet_exports(dashboard: dict[str, Any]) -> None:
    shown = {name for _, query in dashboard_queries(dashboard) for name in METRIC.findall(query)}
    families = {f.name for f in REGISTRY.collect() if f.name.startswith("recofleet_")}
    missing = {f for f in families if not any(name.startswith(f) for name in shown)}
    assert not missing, f"metrics no panel shows: {sorted(missing)}"


def test_dashboard_panels_are_laid_out_without_overlap(dashboard: dict[str, Any]) -> None:
    cells: set[tuple[int, int]] = set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        covered = {
            (x, y)
            for x in range(box["x"], box["x"] + box["w"])
            for y in range(box["y"], box["y"] + box["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace"}


def test_alert_rules_parse_and_read_exported_metrics(chart: Any) -> None:  # noqa: F811
    known = exported()
    rendered = render(chart, minimum("prometheusRule.enabled=true"))
    rules = [
        (rule["alert"], rule["expr"])
        for doc in documents(rendered)
        if doc["kind"] == "PrometheusRule"
        for group in doc["spec"]["groups"]
        for rule in group["rules"]
    ]
    assert {"RecofleetConsumerLag", "RecofleetNoModel", "RecofleetDegradedAnswers"} <= {
        name for name, _ in rules
    }
    for name, expr in rules:
        check(f"alert {name}", expr, known)
