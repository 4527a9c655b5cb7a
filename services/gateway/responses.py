"""The error responses of the OpenAPI document: every one is an `ErrorBody`, `{"detail": str}`.

Each route lists the statuses it can really send (`errors(400, 413, ...)`), so that the
document FastAPI builds says what the gateway does; listing 422 here also keeps FastAPI from
advertising its own `HTTPValidationError` (an array), which the gateway never sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from services.common.events import CatalogItem, Event
from services.gateway.schemas import ErrorBody

DESCRIPTIONS = {
    400: "The body is empty or not JSON recofleet can read (the detail says where).",
    401: "Missing or wrong write key.",
    404: "Nothing here.",
    409: "The request conflicts with what is stored (a limit reached): nothing was changed.",
    413: "The body is larger than the gateway takes (`RECOFLEET_GATEWAY_MAX_BODY_BYTES`), "
    "or carries more events or items than ingestion takes in one request.",
    415: "Not a JSON content type. Accepted: no content type, `application/json`, "
    "`application/*+json`, `text/plain`, `application/x-ndjson`, `application/jsonl`; "
    "charset utf-8 only.",
    422: "A query or path parameter is invalid.",
    429: "Past this client's request rate: retry after `Retry-After` seconds.",
    500: "Internal error, logged by the gateway; sending the same request again will not help.",
    503: "A service the answer needs is unavailable; nothing was done: retry.",
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "The authentication scheme expected (HTTP basic).",
            "schema": {"type": "string"},
        }
    },
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}


def errors(
    *statuses: int, descriptions: dict[int, str] | None = None, models: dict[int, Any] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route for these error statuses, each documented as an ErrorBody."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "model": (models or {}).get(status, ErrorBody),
            "description": (descriptions or {}).get(status, DESCRIPTIONS[status]),
        }
        if status in HEADERS:
            response["headers"] = HEADERS[status]
        documented[status] = response
    return documented


# Request bodies the gateway reads raw (ingestion validates them): the native models are
# documented as what a native body holds, next to "any JSON object or array" for the
# other formats and for what ingestion refuses event by event.
BODY_MODELS: dict[str, type[BaseModel]] = {"Event": Event, "CatalogItem": CatalogItem}


def similar_items_link(item_pointer: str) -> dict[str, Any]:
    """An OpenAPI link to the similar items of the item at `item_pointer` in the answer."""
    return {
        "operationId": "get_similar_items",
        "parameters": {"item_id": f"$response.body#{item_pointer}"},
    }


def raw_body_schema(model: str, batch_key: str) -> dict[str, Any]:
    """A body that is one `model`, `{batch_key: [model, ...]}`, or any JSON object or array."""
    ref = {"$ref": f"#/components/schemas/{model}"}
    return {
        "anyOf": [
            ref,
            {
                "type": "object",
                "required": [batch_key],
                "properties": {batch_key: {"type": "array", "items": ref}},
            },
            {"type": "object"},
            {"type": "array"},
        ]
    }


def complete(document: dict[str, Any], max_limit: int) -> None:
    """Add to FastAPI's document what it cannot know of: the native models raw bodies refer
    to, the write key scheme the Segment endpoints declare, and the configured largest
    `limit` (a setting, checked by the routes)."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name, model in BODY_MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    components.setdefault("securitySchemes", {})["segmentWriteKey"] = {
        "type": "http",
        "scheme": "basic",
        "description": "Segment's write key as the user name, no password "
        "(or, without basic auth, the body's `writeKey`).",
    }
    for operation in (op for methods in document["paths"].values() for op in methods.values()):
        _shared_definitions(operation, schemas)
        for parameter in operation.get("parameters", []):
            if parameter["name"] == "limit" and parameter["in"] == "query":
                parameter["schema"]["maximum"] = max_limit


LOCAL_REF = "#/$defs/"


def _shared_definitions(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Move the `$defs` of a body schema a route declares itself (`model_body`) into the
    document's components: `#/$defs/...` points at the root of the document, where OpenAPI
    tools (client generators, validators) look for it in vain."""
    for content in operation.get("requestBody", {}).get("content", {}).values():
        schema = content.get("schema", {})
        for name, definition in schema.pop("$defs", {}).items():
            linked = _relinked(definition)
            if schemas.setdefault(name, linked) != linked:
                raise ValueError(f"two different body schemas are both named {name}")
        content["schema"] = _relinked(schema)


def _relinked(schema: Any) -> Any:
    """`schema` with its local references pointing into the components."""
    if isinstance(schema, dict):
        return {
            key: (
                value.replace(LOCAL_REF, "#/components/schemas/", 1)
                if key == "$ref" and isinstance(value, str)
                else _relinked(value)
            )
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_relinked(value) for value in schema]
    return schema
