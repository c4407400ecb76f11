"""API keys: issue (the full key is in the response once, never again), list, revoke."""

from __future__ import annotations

import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator

from flowforge.api.deps import CurrentPrincipal
from flowforge.api.jsonbody import ExactJSONRoute
from flowforge.api.schemas import (
    DEFAULT_PAGE_SIZE,
    Cursor,
    KeyName,
    Limit,
    Page,
    RequestModel,
    Timestamp,
    error_responses,
)
from flowforge.core.errors import ConflictError
from flowforge.db.tables import Scope
from flowforge.domain import api_keys
from flowforge.domain.principal import Principal

router = APIRouter(
    tags=["api keys"], responses=error_responses(401, 403, 422), route_class=ExactJSONRoute
)


class ApiKeyOut(BaseModel):
    """A stored key: never its secret or its hash."""

    id: UUID
    user_id: UUID
    name: str
    prefix: str = Field(description="Not secret: the `<prefix>` in `ff_<prefix>_<secret>`.")
    scopes: list[Scope]
    expires_at: datetime.datetime | None
    revoked_at: datetime.datetime | None
    last_used_at: datetime.datetime | None = Field(
        description="Last successful use, to within a minute (it is written at most once a minute)."
    )
    granted_by_key_id: UUID | None = Field(
        description=(
            "The key that made this one (`POST /api-keys`); null for a key issued by the CLI. "
            "Revoking that key revokes this one too."
        )
    )
    created_at: datetime.datetime


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(
        description="The full key, `ff_<prefix>_<secret>`. Shown only in this response: store it now."
    )


class ApiKeyCreate(RequestModel):
    name: KeyName
    scopes: list[Scope] = Field(
        default=[Scope.READ],
        min_length=1,
        max_length=3,
        description="Any of read, write, admin, worker; within your role and your own key's scopes.",
    )
    expires_at: Timestamp | None = Field(
        default=None,
        description=(
            "When the key stops working (with a time zone); null: never. No later than the "
            "expiry of the key making the request (422 otherwise): a key cannot outlive the "
            "key that created it, so an expiring key must give one."
        ),
    )
    user_id: UUID | None = Field(
        default=None, description="Issue the key to another user (admin scope); default: yourself."
    )

    @field_validator("scopes")
    @classmethod
    def _unique(cls, scopes: list[Scope]) -> list[Scope]:
        return sorted(set(scopes))

    @field_validator("expires_at")
    @classmethod
    def _future(cls, value: datetime.datetime | None) -> datetime.datetime | None:
        if value is not None and value <= datetime.datetime.now(datetime.UTC):
            raise ValueError("must be in the future")
        return value


def _managed_user(principal: Principal, user_id: UUID | None, scope: Scope) -> UUID:
    """The user whose keys this request manages: yourself (`scope`), or anyone (admin)."""
    if user_id is None or user_id == principal.user_id:
        principal.require(scope)
        return principal.user_id
    principal.require_admin()
    return user_id


@router.post(
    "/api-keys",
    status_code=201,
    summary="Issue an API key (the full key is returned once)",
    responses=error_responses(404, 409),
)
async def create_api_key(body: ApiKeyCreate, principal: CurrentPrincipal) -> ApiKeyCreated:
    """Only a prefix and a SHA-256 hash are stored; the secret cannot be shown again.
    A key's scopes must be allowed by its user's role (viewer: read; developer: read,
    write; admin: all) and by the scopes of the key making the request."""
    user_id = _managed_user(principal, body.user_id, Scope.WRITE)
    key, full_key = await api_keys.create_api_key(
        user_id,
        name=body.name,
        scopes=body.scopes,
        expires_at=body.expires_at,
        granted_by=principal,
    )
    return ApiKeyCreated(**key, key=full_key)


@router.get("/api-keys", summary="List API keys, newest first")
async def list_api_keys(
    principal: CurrentPrincipal,
    user_id: Annotated[
        UUID | None, Query(description="Another user's keys (admin scope); default: yours.")
    ] = None,
    limit: Annotated[Limit, Query()] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[Cursor, Query()] = None,
) -> Page[ApiKeyOut]:
    owner = _managed_user(principal, user_id, Scope.READ)
    items, next_cursor = await api_keys.list_api_keys(user_id=owner, limit=limit, cursor=cursor)
    return Page[ApiKeyOut](items=[ApiKeyOut(**item) for item in items], next_cursor=next_cursor)


@router.post(
    "/api-keys/{api_key_id}/revoke",
    summary="Revoke an API key and the keys it granted (at once; revoking twice is harmless)",
    responses=error_responses(404, 409),
)
async def revoke_api_key(api_key_id: UUID, principal: CurrentPrincipal) -> ApiKeyOut:
    """Your own keys with the write scope; anyone's with the admin scope. Every key
    the key granted (made with it through `POST /api-keys`), and every key those
    granted, is revoked with it in the same transaction, whoever it belongs to:
    a key never outlives the key that granted it. A key cannot revoke itself, nor
    a key that granted it, directly or not (409): revoke it with another key, so
    a client cannot lock itself out by mistake."""
    if api_key_id == principal.key_id:
        raise ConflictError(
            "A key cannot revoke itself: revoke it with another key.", api_key_id=str(api_key_id)
        )
    if Scope.ADMIN in principal.effective_scopes:
        owner = None
    else:
        principal.require(Scope.WRITE)
        owner = principal.user_id
    key = await api_keys.revoke_api_key(api_key_id, user_id=owner, acting_key_id=principal.key_id)
    return ApiKeyOut(**key)
