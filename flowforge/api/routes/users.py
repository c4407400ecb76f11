"""Users: admin only (role admin and a key with the admin scope), plus `GET /me` for anyone."""

from __future__ import annotations

import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel

from flowforge.api.deps import CurrentPrincipal
from flowforge.api.jsonbody import ExactJSONRoute
from flowforge.api.schemas import (
    DEFAULT_PAGE_SIZE,
    Cursor,
    DisplayName,
    Email,
    Limit,
    Page,
    RequestModel,
    error_responses,
)
from flowforge.db.tables import Role, Scope
from flowforge.domain import users
from flowforge.domain.principal import Principal

router = APIRouter(
    tags=["users"], responses=error_responses(401, 403, 422), route_class=ExactJSONRoute
)


class UserOut(BaseModel):
    id: UUID
    email: str
    display_name: str
    role: Role
    is_active: bool
    created_at: datetime.datetime
    updated_at: datetime.datetime


class MeOut(BaseModel):
    user: UserOut
    api_key_id: UUID
    scopes: list[Scope]
    effective_scopes: list[Scope]


class UserCreate(RequestModel):
    email: Email
    display_name: DisplayName
    role: Role = Role.DEVELOPER


class UserUpdate(RequestModel):
    display_name: DisplayName | None = None
    role: Role | None = None


@router.get("/me", summary="Who am I: the key's user, scopes and effective scopes")
async def me(principal: CurrentPrincipal) -> MeOut:
    return MeOut(
        user=UserOut(**await users.get_user(principal.user_id)),
        api_key_id=principal.key_id,
        scopes=sorted(principal.scopes),
        effective_scopes=sorted(principal.effective_scopes),
    )


@router.post(
    "/users",
    status_code=201,
    summary="Create a user",
    responses=error_responses(409),
)
async def create_user(body: UserCreate, principal: CurrentPrincipal) -> UserOut:
    """Emails are unique case-insensitively (409 if taken). Give the user a key
    with `POST /api/v1/api-keys` and `user_id`."""
    principal.require_admin()
    user = await users.create_user(body.email, body.display_name, body.role)
    return UserOut(**user)


@router.get("/users", summary="List users, newest first")
async def list_users(
    principal: CurrentPrincipal,
    limit: Annotated[Limit, Query()] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[Cursor, Query()] = None,
) -> Page[UserOut]:
    principal.require_admin()
    items, next_cursor = await users.list_users(limit=limit, cursor=cursor)
    return Page[UserOut](items=[UserOut(**item) for item in items], next_cursor=next_cursor)


@router.get("/users/{user_id}", summary="Get a user", responses=error_responses(404))
async def get_user(user_id: UUID, principal: CurrentPrincipal) -> UserOut:
    principal.require_admin()
    return UserOut(**await users.get_user(user_id))


async def _update(user_id: UUID, principal: Principal, **changes: Any) -> UserOut:
    principal.require_admin()
    user = await users.update_user(user_id, acting_user_id=principal.user_id, **changes)
    return UserOut(**user)


@router.patch(
    "/users/{user_id}",
    summary="Change a user's display name or role",
    responses=error_responses(404, 409),
)
async def update_user(user_id: UUID, body: UserUpdate, principal: CurrentPrincipal) -> UserOut:
    """An admin cannot demote themselves (409)."""
    return await _update(user_id, principal, display_name=body.display_name, role=body.role)


@router.post(
    "/users/{user_id}/deactivate",
    summary="Deactivate a user: all their API keys stop working at once",
    responses=error_responses(404, 409),
)
async def deactivate_user(user_id: UUID, principal: CurrentPrincipal) -> UserOut:
    """Users are deactivated, not deleted: they may own workflows and runs
    (which keep them as owner / trigger). An admin cannot deactivate themselves (409)."""
    return await _update(user_id, principal, is_active=False)


@router.post(
    "/users/{user_id}/activate",
    summary="Activate a deactivated user",
    responses=error_responses(404),
)
async def activate_user(user_id: UUID, principal: CurrentPrincipal) -> UserOut:
    return await _update(user_id, principal, is_active=True)
