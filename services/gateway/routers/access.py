"""The access key a request carries, as the gateway knows it: its id, name and scopes.

Any valid key may ask about itself (a console shows only what the key may do); the record
never holds the key itself, so nothing secret is answered.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from services.gateway.access_keys import ENV_KEY_ID, SCOPES, AccessKey, Scope
from services.gateway.auth import require_key
from services.gateway.routing import AllowingRoute

router = APIRouter(prefix="/v1", tags=["access keys"], route_class=AllowingRoute)


class AccessKeyOut(BaseModel):
    key_id: str = Field(
        description=f"The key's public id (`{ENV_KEY_ID}`: the key RECOFLEET_ADMIN_KEY sets)."
    )
    name: str | None = Field(description="What the key is for, as it was made; null: none.")
    scopes: list[Scope] = Field(description="The scopes it was made with.")
    allows: list[Scope] = Field(
        description="Every scope it may use: its own, or all of them for `admin`."
    )
    created_at: datetime

    @classmethod
    def of(cls, key: AccessKey) -> AccessKeyOut:
        return cls(
            key_id=key.id,
            name=key.name or None,
            scopes=key.scope_list,
            allows=[scope for scope in SCOPES if key.allows(scope)],
            created_at=key.created_at,
        )


@router.get(
    "/access-key",
    operation_id="get_access_key",
    dependencies=[require_key()],
    response_model=AccessKeyOut,
    responses={200: {"description": "The key this request carries."}},
)
async def access_key(request: Request) -> AccessKeyOut:
    """Which key this is and what it may do, from the key store (never the key itself)."""
    return AccessKeyOut.of(request.state.access_key)
