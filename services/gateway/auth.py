"""Access keys at the edge: the scope each route needs, and the dependency that checks it.

A route declares its scope with `dependencies=[require("events:write")]`, or that any valid
key will do with `dependencies=[require_key()]`. The key comes as
`Authorization: Bearer <key>` or `X-API-Key: <key>` (the bearer one wins when both come);
none is `401`, one the store does not know (or that was revoked) is `401`, one without the
scope is `403`, each with a JSON `detail` and a `WWW-Authenticate: Bearer` challenge.

Keys are checked against the store, and what it answered (yes or no) is kept in the process
for `CACHE_S` at most: `recofleet keys revoke` writes to the store, so every gateway replica
refuses a revoked key within that time, with no message between them. Open paths (health,
readiness, metrics, the OpenAPI document and its pages) declare no scope.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy.exc import SQLAlchemyError

from services.gateway.access_keys import ADMIN, AccessKey, AccessKeyStore, Scope, digest, key_id
from services.gateway.responses import RETRY_AFTER

log = logging.getLogger(__name__)

# Half a second: a revoked key is refused within a second, lookups included, and a key in
# use costs the store two primary-key reads a second per replica. Measured on 2 cores: a
# lookup through a worker thread costs 0.6 ms (SQLite file) to 1 ms (PostgreSQL on
# loopback) of a request, a remembered answer 3 us.
CACHE_S = 0.5
MISSING = "an access key is needed: send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
INVALID = "the access key is not valid: unknown, mistyped or revoked"
UNCHECKED = "access keys cannot be checked right now (the key store is unreachable); retry"
REALM = 'Bearer realm="recofleet"'
# The query parameter a route may take the key in (GA4's Measurement Protocol's name).
QUERY_KEY = "api_secret"


class KeyVerifier:
    """Answers whether a presented key is an active key, from the store, remembered briefly.

    Answers are remembered by the key's digest (what the store compares too), for `cache_s`,
    at most `max_cached` of them, so that a flood of made-up keys cannot grow the process.
    """

    def __init__(
        self,
        store: AccessKeyStore,
        cache_s: float = CACHE_S,
        clock: Callable[[], float] = time.monotonic,
        max_cached: int = 10_000,
    ) -> None:
        self.store = store
        self._cache_s = cache_s
        self._clock = clock
        self._max_cached = max_cached
        self._cache: OrderedDict[str, tuple[float, AccessKey | None]] = OrderedDict()

    async def verify(self, presented: str) -> AccessKey | None:
        """The active key `presented` is, or None. Raises SQLAlchemyError when the store
        cannot be read (and nothing fresh enough is remembered)."""
        wanted = digest(presented)
        now = self._clock()
        remembered = self._cache.get(wanted)
        # A dict lookup by digest is not constant time, but what it could leak is how much of
        # a SHA-256 digest a guess shares with a key's: nothing that helps find the key.
        if remembered is not None and remembered[0] > now:
            return remembered[1]
        found = await asyncio.to_thread(self.store.get, key_id(presented))
        key = found if found is not None and found.active and found.matches(presented) else None
        self._cache[wanted] = (self._clock() + self._cache_s, key)
        self._cache.move_to_end(wanted)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return key


def presented_key(request: Request) -> str | None:
    """The key a request carries: `Authorization: Bearer <key>`, else `X-API-Key: <key>`.
    Other authorization schemes (the Segment endpoints' basic auth) are not access keys."""
    scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key", "").strip() or None


class RequireScope:
    """The dependency of a route that needs `scope` (None: any valid key): the verified key,
    also kept as `request.state.access_key` (the rate limit counts requests per key).

    With `query`, the key may also come as that query parameter, for a protocol that puts
    its secret in the URL (GA4's Measurement Protocol: `api_secret`)."""

    def __init__(self, scope: Scope | None, query: str | None = None) -> None:
        self.scope = scope
        self.query = query

    async def __call__(self, request: Request) -> AccessKey:
        presented = presented_key(request)
        if presented is None and self.query:
            presented = request.query_params.get(self.query, "").strip() or None
        if presented is None:
            missing = (
                f"{MISSING}, or as the query parameter '{self.query}'" if self.query else MISSING
            )
            raise HTTPException(401, missing, headers={"WWW-Authenticate": REALM})
        verifier: KeyVerifier = request.app.state.access_keys
        try:
            key = await verifier.verify(presented)
        except SQLAlchemyError as exc:
            log.error("access key store unreachable: %s", exc)
            raise HTTPException(503, UNCHECKED, headers={"Retry-After": "1"}) from exc
        if key is None:
            raise HTTPException(
                401, INVALID, headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
            )
        if self.scope is not None and not key.allows(self.scope):
            raise HTTPException(
                403,
                f"this access key lacks the scope '{self.scope}' needed here (it has: "
                f"{', '.join(key.scope_list)}); use a key with '{self.scope}' or '{ADMIN}'",
                headers={
                    "WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{self.scope}"'
                },
            )
        request.state.access_key = key
        return key


def require(scope: Scope, query: str | None = None) -> Any:
    """`dependencies=[require(scope)]`: the route answers only keys with `scope` (or admin),
    sent in a header or, with `query`, as that query parameter."""
    return Depends(RequireScope(scope, query))


def require_key() -> Any:
    """`dependencies=[require_key()]`: the route answers any valid key, whatever its scopes."""
    return Depends(RequireScope(None))


def route_scopes(app: FastAPI) -> dict[tuple[str, str], Scope | None]:
    """The scope each operation needs (None: any valid key), by (path, lower-case method)."""
    scopes: dict[tuple[str, str], Scope | None] = {}
    # Route contexts: what FastAPI documents, included routers' prefixes and dependencies in.
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute) or route.path_format is None:
            continue
        for dependency in route.dependencies:
            if isinstance(dependency.dependency, RequireScope):
                for method in route.methods or ():
                    scopes[(route.path_format, method.lower())] = dependency.dependency.scope
    return scopes


SECURITY_SCHEMES = {
    "accessKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An access key: `Authorization: Bearer rf_...` (`recofleet keys create`).",
    },
    "accessKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same access key in the `X-API-Key` header instead.",
    },
    "accessKeyQuery": {
        "type": "apiKey",
        "in": "query",
        "name": QUERY_KEY,
        "description": f"The same access key as `{QUERY_KEY}` in the URL, where a protocol puts "
        "its secret there (GA4's Measurement Protocol, `/mp/collect` only).",
    },
}
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
_CHALLENGE = {
    "WWW-Authenticate": {
        "description": "The scheme expected: `Bearer` (the error and scope, on a 403).",
        "schema": {"type": "string"},
    }
}


def document_scopes(document: dict[str, Any], scopes: dict[tuple[str, str], Scope | None]) -> None:
    """Add the access key schemes to the OpenAPI document and, to each operation that needs
    a key, its security, the scope in its description, and its 401, 403 (with a scope) and
    503."""
    document.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    for (path, method), scope in scopes.items():
        operation = document["paths"][path][method]
        operation["security"] = [{"accessKey": []}, {"accessKeyHeader": []}]
        if any(p.get("name") == QUERY_KEY for p in operation.get("parameters", [])):
            operation["security"].append({"accessKeyQuery": []})
        needs = (
            f"Needs an access key with the scope `{scope}` (or `{ADMIN}`)."
            if scope is not None
            else "Needs a valid access key, whatever its scopes."
        )
        description = operation.get("description")
        operation["description"] = f"{description}\n\n{needs}" if description else needs
        responses = operation.setdefault("responses", {})
        responses["401"] = {
            "description": "No access key, or one that is unknown or revoked.",
            "headers": _CHALLENGE,
            "content": _ERROR,
        }
        if scope is not None:
            responses["403"] = {
                "description": f"The access key does not have the scope `{scope}`.",
                "headers": _CHALLENGE,
                "content": _ERROR,
            }
        unreachable = responses.get("503")
        if unreachable is None:
            responses["503"] = {
                "description": "The access key store is unreachable; nothing was done: retry.",
                "headers": RETRY_AFTER,
                "content": _ERROR,
            }
        else:
            unreachable["description"] += " Also when the access key store is unreachable."
