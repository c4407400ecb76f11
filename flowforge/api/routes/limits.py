"""Named concurrency limits shared by workflows (issue 18): anyone reads them, admins change them.

A limit is shared capacity (a downstream service's): every workflow that names
it counts against it, whoever owns the workflow, so creating, changing and
deleting one is an admin's (role admin and a key with the admin scope), as for
users. Any key with the read scope may list and read them, so a developer can
find the name to give their workflow (`concurrency_limit`).
"""

from __future__ import annotations

import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field, field_validator

from flowforge.api.deps import CurrentPrincipal, ReadPrincipal
from flowforge.api.jsonbody import ExactJSONRoute
from flowforge.api.schemas import (
    DEFAULT_PAGE_SIZE,
    Cursor,
    Limit,
    LimitName,
    MaxRunning,
    Page,
    RequestModel,
    error_responses,
)
from flowforge.db.tables import Scope
from flowforge.domain import limits

router = APIRouter(
    tags=["concurrency limits"],
    responses=error_responses(401, 403, 422),
    route_class=ExactJSONRoute,
)

MAX_RUNNING_DESCRIPTION = (
    "At most this many runs of all its workflows together `running`; 0 pauses "
    "them (running runs finish, none starts)."
)
LimitKey = Annotated[
    str,
    Path(min_length=1, max_length=100, description="The limit's name, or its id."),
]


class ConcurrencyLimitOut(BaseModel):
    id: UUID
    name: str
    max_running: int
    workflow_count: int = Field(
        description="The workflows that use it (a limit in use cannot be deleted)."
    )
    created_at: datetime.datetime
    updated_at: datetime.datetime


def _not_an_id(name: str | None) -> str | None:
    # The routes take a name or an id: a name that reads as an id would be unreachable.
    if name is not None:
        try:
            UUID(name)
        except ValueError:
            return name
        raise ValueError("must not look like an id (a UUID): the routes take a name or an id")
    return name


class ConcurrencyLimitCreate(RequestModel):
    name: LimitName = Field(description="Unique (409 if taken); workflows name it.")
    max_running: MaxRunning = Field(description=MAX_RUNNING_DESCRIPTION)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return _not_an_id(name)


class ConcurrencyLimitUpdate(RequestModel):
    name: LimitName | None = Field(
        default=None,
        description="Rename it (the workflows using it follow: they reference it by id).",
    )
    max_running: MaxRunning | None = Field(default=None, description=MAX_RUNNING_DESCRIPTION)

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return _not_an_id(name)


@router.post(
    "/concurrency-limits",
    status_code=201,
    summary="Create a named concurrency limit (admins)",
    responses=error_responses(409),
)
async def create_concurrency_limit(
    body: ConcurrencyLimitCreate, principal: CurrentPrincipal
) -> ConcurrencyLimitOut:
    """Then give its name to workflows: `PATCH /workflows/{id}` with `concurrency_limit`."""
    principal.require_admin()
    return ConcurrencyLimitOut(**await limits.create_limit(body.name, body.max_running))


@router.get("/concurrency-limits", summary="List the concurrency limits, newest first")
async def list_concurrency_limits(
    principal: ReadPrincipal,
    limit: Annotated[Limit, Query()] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[Cursor, Query()] = None,
) -> Page[ConcurrencyLimitOut]:
    """Keyset pagination: pass `next_cursor` back as `cursor`."""
    principal.require(Scope.READ)
    items, next_cursor = await limits.list_limits(limit=limit, cursor=cursor)
    return Page[ConcurrencyLimitOut](
        items=[ConcurrencyLimitOut(**item) for item in items], next_cursor=next_cursor
    )


@router.get(
    "/concurrency-limits/{concurrency_limit}",
    summary="Get a concurrency limit by name or id",
    responses=error_responses(404),
)
async def get_concurrency_limit(
    concurrency_limit: LimitKey, principal: ReadPrincipal
) -> ConcurrencyLimitOut:
    principal.require(Scope.READ)
    return ConcurrencyLimitOut(**await limits.get_limit(concurrency_limit))


@router.patch(
    "/concurrency-limits/{concurrency_limit}",
    summary="Rename a concurrency limit or change its max_running (admins)",
    responses=error_responses(404, 409),
)
async def update_concurrency_limit(
    concurrency_limit: LimitKey, body: ConcurrencyLimitUpdate, principal: CurrentPrincipal
) -> ConcurrencyLimitOut:
    """Only the fields sent change. A lower `max_running` stops no running run: none
    of its workflows' runs starts (direct start or claim) until fewer than it run;
    0 pauses them. A raised one lets the next claims take the new slots."""
    principal.require_admin()
    changes = body.model_dump(exclude_none=True)
    return ConcurrencyLimitOut(**await limits.update_limit(concurrency_limit, changes))


@router.delete(
    "/concurrency-limits/{concurrency_limit}",
    status_code=204,
    summary="Delete a concurrency limit no workflow uses (admins)",
    responses=error_responses(404, 409),
)
async def delete_concurrency_limit(
    concurrency_limit: LimitKey, principal: CurrentPrincipal
) -> Response:
    """409 while workflows use it: detach them first (`concurrency_limit: null`)."""
    principal.require_admin()
    await limits.delete_limit(concurrency_limit)
    return Response(status_code=204)
