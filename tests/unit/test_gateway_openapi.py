"""The OpenAPI document says what the gateway does: its error body, statuses, request bodies."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from services.common.settings import FleetSettings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings

INGESTION = {"400", "413", "415", "422", "429", "500", "503"}
SEGMENT = INGESTION | {"401", "404"}
# An access key missing or unknown (401), without the scope (403), or not checkable (503).
KEYED = {"401", "403", "503"}
# A change with a body, of something that may be missing or refuse it.
BODY_CHANGE = {"200", "400", "404", "409", "413", "415", "422"}
STATUSES = {
    ("post", "/v1/events"): {"202"} | INGESTION | KEYED,
    ("put", "/v1/items"): {"200"} | INGESTION | KEYED,
    # A batch read in full is a 200 as on api.segment.io, whatever became of its events.
    ("post", "/segment/v1/batch"): {"200"} | SEGMENT - {"422"},
    ("post", "/segment/v1/{call}"): {"200"} | SEGMENT,
    # Accepted as on Google's endpoint: 204 and no body.
    ("post", "/mp/collect"): {"204"} | INGESTION | KEYED,
    ("get", "/v1/members/{member_id}/recommendations"): {"200", "422"} | KEYED,
    ("get", "/v1/members/{member_id}/profile"): {"200", "404", "422"} | KEYED,
    ("get", "/v1/members/{member_id}/offers"): {"200", "422"} | KEYED,
    ("put", "/v1/members/{member_id}/tags/{tag}"): {"200", "404", "409", "422"} | KEYED,
    ("delete", "/v1/members/{member_id}/tags/{tag}"): {"200", "404", "409", "422"} | KEYED,
    ("get", "/v1/items/{item_id}/similar"): {"200", "422"} | KEYED,
    ("get", "/v1/items/{item_id}"): {"200", "404", "422"} | KEYED,
    ("post", "/v1/rules"): {"201", "400", "409", "413", "415", "422"} | KEYED,
    ("get", "/v1/rules"): {"200", "422"} | KEYED,
    ("get", "/v1/rules/{rule_id}"): {"200", "404", "422"} | KEYED,
    ("put", "/v1/rules/{rule_id}"): {"200", "400", "409", "413", "415", "422"} | KEYED,
    ("delete", "/v1/rules/{rule_id}"): {"204", "404", "422"} | KEYED,
    ("put", "/v1/members/{member_id}/consent"): {"200", "400", "413", "415", "422"} | KEYED,
    ("delete", "/v1/members/{member_id}"): {"202", "422"} | KEYED,
    ("get", "/v1/segments"): {"200"} | KEYED,
    ("post", "/v1/segments"): {"201", "400", "409", "413", "415", "422"} | KEYED,
    ("get", "/v1/segments/{name}"): {"200", "404", "422"} | KEYED,
    ("put", "/v1/segments/{name}"): {"200", "400", "409", "413", "415", "422"} | KEYED,
    ("delete", "/v1/segments/{name}"): {"204", "404", "409", "422"} | KEYED,
    ("get", "/v1/segments/{name}/members"): {"200", "404", "422"} | KEYED,
    ("get", "/v1/segments/{name}/export"): {"200", "404", "422"} | KEYED,
    ("get", "/v1/models"): {"200"} | KEYED,
    ("post", "/v1/models/retrieval/rollback"): {"200", "400", "404", "409", "413", "415", "422"}
    | KEYED,
    ("post", "/v1/models/{name}/activate"): BODY_CHANGE | KEYED,
    ("post", "/v1/experiments"): {"201", "400", "413", "415", "422"} | KEYED,
    ("get", "/v1/experiments"): {"200"} | KEYED,
    ("get", "/v1/experiments/{experiment_id}"): {"200", "404", "422"} | KEYED,
    ("put", "/v1/experiments/{experiment_id}/shares"): BODY_CHANGE | KEYED,
    ("post", "/v1/experiments/{experiment_id}/start"): {"200", "404", "409", "422"} | KEYED,
    ("post", "/v1/experiments/{experiment_id}/pause"): {"200", "404", "409", "422"} | KEYED,
    ("post", "/v1/experiments/{experiment_id}/stop"): BODY_CHANGE | KEYED,
    ("get", "/v1/experiments/{experiment_id}/report"): {"200", "404", "422"} | KEYED,
    ("post", "/v1/campaigns"): {"201", "400", "413", "415", "422"} | KEYED,
    ("get", "/v1/campaigns"): {"200", "422"} | KEYED,
    ("get", "/v1/campaigns/templates"): {"200"} | KEYED,
    ("get", "/v1/campaigns/{campaign_id}"): {"200", "404", "422"} | KEYED,
    ("put", "/v1/campaigns/{campaign_id}"): {"200", "400", "404", "413", "415", "422"} | KEYED,
    ("delete", "/v1/campaigns/{campaign_id}"): {"204", "404", "422"} | KEYED,
    ("post", "/v1/campaigns/{campaign_id}/activate"): {"200", "404", "409", "422"} | KEYED,
    ("post", "/v1/campaigns/{campaign_id}/pause"): {"200", "404", "409", "422"} | KEYED,
    ("post", "/v1/campaigns/{campaign_id}/end"): {"200", "404", "409", "422"} | KEYED,
    ("get", "/v1/campaigns/{campaign_id}/audience"): {"200", "404", "422"} | KEYED,
    ("post", "/v1/campaigns/{campaign_id}/export"): {"200", "404", "422"} | KEYED,
    ("get", "/v1/campaigns/{campaign_id}/report"): {"200", "404", "422"} | KEYED,
    ("get", "/v1/members/{member_id}/segments"): {"200", "404", "422"} | KEYED,
    ("post", "/v1/segments/discover"): {"200", "400", "409", "413", "415", "422"} | KEYED,
    ("post", "/v1/segments/count"): {"200", "400", "413", "415", "422"} | KEYED,
    ("post", "/v1/rules/preview"): {"200", "400", "413", "415", "422"} | KEYED,
    ("get", "/v1/overview"): {"200"} | KEYED,
    # Any valid key: no scope to lack, so no 403.
    ("get", "/v1/access-key"): {"200", "401", "503"},
    ("get", "/healthz"): {"200"},
    ("get", "/readyz"): {"200", "503"},
    ("get", "/metrics"): {"200"},
}
SCOPES = {
    ("post", "/v1/events"): "events:write",
    ("post", "/mp/collect"): "events:write",
    ("put", "/v1/items"): "events:write",
    ("get", "/v1/members/{member_id}/recommendations"): "recommendations:read",
    ("get", "/v1/members/{member_id}/profile"): "profiles:read",
    ("get", "/v1/members/{member_id}/offers"): "recommendations:read",
    ("put", "/v1/members/{member_id}/tags/{tag}"): "segments:write",
    ("delete", "/v1/members/{member_id}/tags/{tag}"): "segments:write",
    ("get", "/v1/items/{item_id}/similar"): "recommendations:read",
    ("get", "/v1/items/{item_id}"): "recommendations:read",
    ("post", "/v1/rules"): "admin",
    ("get", "/v1/rules"): "admin",
    ("get", "/v1/rules/{rule_id}"): "admin",
    ("put", "/v1/rules/{rule_id}"): "admin",
    ("delete", "/v1/rules/{rule_id}"): "admin",
    ("put", "/v1/members/{member_id}/consent"): "events:write",
    ("delete", "/v1/members/{member_id}"): "admin",
    ("get", "/v1/segments"): "profiles:read",
    ("post", "/v1/segments"): "segments:write",
    ("get", "/v1/segments/{name}"): "profiles:read",
    ("put", "/v1/segments/{name}"): "segments:write",
    ("delete", "/v1/segments/{name}"): "segments:write",
    ("get", "/v1/segments/{name}/members"): "profiles:read",
    ("get", "/v1/segments/{name}/export"): "profiles:read",
    ("get", "/v1/models"): "recommendations:read",
    ("post", "/v1/models/retrieval/rollback"): "admin",
    ("post", "/v1/models/{name}/activate"): "admin",
    ("post", "/v1/experiments"): "admin",
    ("get", "/v1/experiments"): "admin",
    ("get", "/v1/experiments/{experiment_id}"): "admin",
    ("put", "/v1/experiments/{experiment_id}/shares"): "admin",
    ("post", "/v1/experiments/{experiment_id}/start"): "admin",
    ("post", "/v1/experiments/{experiment_id}/pause"): "admin",
    ("post", "/v1/experiments/{experiment_id}/stop"): "admin",
    ("get", "/v1/experiments/{experiment_id}/report"): "admin",
    ("get", "/v1/members/{member_id}/segments"): "profiles:read",
    ("post", "/v1/segments/discover"): "segments:write",
    ("post", "/v1/segments/count"): "profiles:read",
    ("post", "/v1/rules/preview"): "admin",
    ("get", "/v1/overview"): "admin",
    **{
        (method, path): "campaigns:write"
        for method, path in (
            ("post", "/v1/campaigns"),
            ("get", "/v1/campaigns"),
            ("get", "/v1/campaigns/templates"),
            ("get", "/v1/campaigns/{campaign_id}"),
            ("put", "/v1/campaigns/{campaign_id}"),
            ("delete", "/v1/campaigns/{campaign_id}"),
            ("post", "/v1/campaigns/{campaign_id}/activate"),
            ("post", "/v1/campaigns/{campaign_id}/pause"),
            ("post", "/v1/campaigns/{campaign_id}/end"),
            ("get", "/v1/campaigns/{campaign_id}/audience"),
            ("post", "/v1/campaigns/{campaign_id}/export"),
            ("get", "/v1/campaigns/{campaign_id}/report"),
        )
    },
}

# Operations any valid key may call, whatever its scopes.
ANY_KEY = {("get", "/v1/access-key")}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(FleetSettings(), GatewaySettings()).openapi()


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_operation_documents_exactly_the_statuses_it_can_send(document):
    documented = {key: set(op["responses"]) for key, op in operations(document).items()}
    assert documented == STATUSES


def test_every_error_is_documented_with_a_string_detail_never_fastapis_array(document):
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["schemas"]["ErrorBody"]["required"] == ["detail"]
    for key, operation in operations(document).items():
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            schema = response["content"]["application/json"]["schema"]
            for alternative in schema.get("anyOf", [schema]):
                model = resolve(document, alternative)
                assert "detail" in model["required"], (key, status, model)
                assert model["properties"]["detail"]["type"] == "string", (key, status)


def test_request_bodies_are_declared_with_examples(document):
    ops = operations(document)
    for key in [
        ("post", "/v1/events"),
        ("put", "/v1/items"),
        ("post", "/segment/v1/batch"),
        ("post", "/segment/v1/{call}"),
        ("post", "/mp/collect"),
    ]:
        body = ops[key]["requestBody"]
        assert body["required"] is True
        content = body["content"]["application/json"]
        assert content["example"] and content["schema"], key
        assert "415" in body["description"] or "text/plain" in body["description"]
    assert ops[("post", "/segment/v1/batch")]["requestBody"]["content"]["application/json"][
        "schema"
    ]["required"] == ["batch"]
    assert ops[("post", "/segment/v1/batch")]["security"] == [{"segmentWriteKey": []}, {}]
    assert document["components"]["securitySchemes"]["segmentWriteKey"]["scheme"] == "basic"
    # GA4's senders put the key in the URL; only that route takes it there.
    assert {"accessKeyQuery": []} in ops[("post", "/mp/collect")]["security"]
    assert {"accessKeyQuery": []} not in ops[("post", "/v1/events")]["security"]


def test_success_bodies_of_the_ingestion_endpoints_are_described(document):
    schemas = document["components"]["schemas"]
    assert set(schemas["EventsAccepted"]["required"]) == {
        "accepted",
        "event_ids",
        "rejected",
        "ignored",
    }
    assert set(schemas["RejectionOut"]["required"]) == {"index", "id", "reason"}
    assert set(schemas["SegmentAccepted"]["required"]) == {
        "success",
        "accepted",
        "event_ids",
        "rejected",
        "ignored",
    }
    ops = operations(document)
    accepted = ops[("post", "/v1/events")]["responses"]["202"]["content"]["application/json"]
    assert accepted["schema"] == {"$ref": "#/components/schemas/EventsAccepted"}
    metrics = ops[("get", "/metrics")]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def test_links_point_at_operations_that_exist(document):
    ids = {op["operationId"] for op in operations(document).values()}
    linked = {
        link["operationId"]
        for op in operations(document).values()
        for response in op["responses"].values()
        for link in response.get("links", {}).values()
    }
    assert linked and linked <= ids


def test_limit_parameters_say_the_configured_maximum():
    document = create_app(FleetSettings(), GatewaySettings(max_limit=42)).openapi()
    # Segment member pages have their own bound (1000), not the recommendations' one.
    limits = [
        parameter["schema"]
        for (_, path), operation in operations(document).items()
        if not path.startswith("/v1/segments")
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "limit"
    ]
    assert len(limits) == 2 and all(s["minimum"] == 1 and s["maximum"] == 42 for s in limits)


def test_native_bodies_are_documented_with_the_event_and_item_models(document):
    schemas = document["components"]["schemas"]
    assert {"Event", "EventItem", "EventType", "CatalogItem"} <= set(schemas)
    body = operations(document)[("post", "/v1/events")]["requestBody"]["content"]
    refs = [s.get("$ref") for s in body["application/json"]["schema"]["anyOf"]]
    assert "#/components/schemas/Event" in refs


def test_every_keyed_operation_declares_both_key_schemes_and_its_scope(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["accessKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["accessKey"]["description"],
    }
    assert (schemes["accessKeyHeader"]["in"], schemes["accessKeyHeader"]["name"]) == (
        "header",
        "X-API-Key",
    )
    for key, operation in operations(document).items():
        if key in ANY_KEY:
            assert operation["security"] == [{"accessKey": []}, {"accessKeyHeader": []}], key
            assert "whatever its scopes" in operation["description"], key
            assert "403" not in operation["responses"], key
            continue
        if key not in SCOPES:
            # Open (health, readiness, metrics) or on the Segment write key.
            assert "accessKey" not in str(operation.get("security", [])), key
            continue
        in_url = [{"accessKeyQuery": []}] if key == ("post", "/mp/collect") else []
        assert operation["security"] == [{"accessKey": []}, {"accessKeyHeader": []}, *in_url], key
        assert f"`{SCOPES[key]}`" in operation["description"], key
        for status in ("401", "403"):
            response = operation["responses"][status]
            assert "WWW-Authenticate" in response["headers"], (key, status)
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (key, status)
        assert SCOPES[key] in operation["responses"]["403"]["description"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_every_reference_points_at_a_schema_of_the_document(document) -> None:
    """Client generators resolve each `$ref` from the document's root: a body's own
    `#/$defs/...` would point at nothing there."""
    refs = set(_refs(document))
    assert refs, "the document refers to no schema at all"
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in document["components"]["schemas"], ref
    campaign = operations(document)[("post", "/v1/campaigns")]["requestBody"]
    assert "$defs" not in campaign["content"]["application/json"]["schema"]
    validate(document)
