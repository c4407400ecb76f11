"""User operations (admin only at the API). They run in the caller's transaction and never commit.

Users are never deleted through the API: a user who owns workflows cannot be
(``workflows.owner_id`` is ON DELETE RESTRICT), and run history should keep its
``triggered_by_user_id``. Deactivating a user locks them out at once: every API
key of an inactive user is refused.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from piccolo.query.base import Query
from piccolo.query.proxy import Proxy

from flowforge.core import events
from flowforge.core.errors import ConflictError, NotFoundError
from flowforge.db.builder import Param, compiled, limited, new_row, page_after
from flowforge.db.engine import DB
from flowforge.db.tables import Role, User
from flowforge.domain.api_keys import PRINCIPALS
from flowforge.domain.pagination import DEFAULT_LIMIT, decode_cursor, page
from flowforge.domain.records import UserRecord
from flowforge.outbox.writer import record_event

USER_COLUMNS = (
    User.id,
    User.email,
    User.display_name,
    User.role,
    User.is_active,
    User.created_at,
    User.updated_at,
)


async def create_user(email: str, display_name: str, role: Role) -> UserRecord:
    """Insert a user and its ``user.created`` event. A taken email is a ConflictError."""
    DB.require_transaction()
    rows = (
        await User.insert(new_row(User, email=email, display_name=display_name, role=role.value))
        .returning(*USER_COLUMNS)
        .run()
    )
    user = cast(UserRecord, rows[0])
    await record_event(
        events.USER,
        user["id"],
        "user.created",
        {"user_id": user["id"], "email": user["email"], "role": user["role"]},
    )
    return user


async def get_user(user_id: UUID, *, for_update: bool = False) -> UserRecord:
    def build() -> Query[Any, Any] | Proxy[Any, Any]:
        query = User.select(*USER_COLUMNS).where(User.id == Param("user_id")).first()
        return query.lock_rows("UPDATE") if for_update else query

    row = await compiled(("users.get_user", for_update), build).first(user_id=user_id)
    if row is None:
        raise NotFoundError("User not found.", user_id=str(user_id))
    return cast(UserRecord, row)


async def list_users(
    *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[UserRecord], str | None]:
    """A page of users, newest first."""
    position = decode_cursor(cursor)

    def build() -> Query[Any, Any]:
        query = limited(
            User.select(*USER_COLUMNS).order_by(User.created_at, User.id, ascending=False),
            Param("limit"),
        )
        if position is not None:
            query = query.where(page_after(User, (Param("created_at"), Param("id"))))
        return query

    query = compiled(("users.list_users", position is not None), build)
    created_at, after_id = position if position is not None else (None, None)
    rows = await query.fetch(limit=limit + 1, created_at=created_at, id=after_id)
    return page(cast(list[UserRecord], rows), limit)


async def update_user(
    user_id: UUID,
    *,
    display_name: str | None = None,
    role: Role | None = None,
    is_active: bool | None = None,
    acting_user_id: UUID | None = None,
) -> UserRecord:
    """Change a user's display name, role or active flag, with its event.

    ``user.deactivated`` / ``user.activated`` when the active flag changes,
    ``user.updated`` otherwise; nothing changed, no event. An admin cannot
    deactivate or demote themselves (``acting_user_id``): that could leave
    nobody able to manage users.
    """
    before = await get_user(user_id, for_update=True)
    if user_id == acting_user_id and (
        is_active is False or (role is not None and role is not Role.ADMIN)
    ):
        raise ConflictError(
            "You cannot deactivate or demote yourself; ask another admin.",
            user_id=str(user_id),
        )
    changes: dict[str, Any] = {}
    if display_name is not None and display_name != before["display_name"]:
        changes["display_name"] = display_name
    if role is not None and role.value != before["role"]:
        changes["role"] = role.value
    if is_active is not None and is_active != before["is_active"]:
        changes["is_active"] = is_active
    if not changes:
        return before
    if "role" in changes or "is_active" in changes:
        PRINCIPALS.clear()  # this worker at once; the others within AUTH_CACHE_SECONDS
    columns = {"display_name": User.display_name, "role": User.role, "is_active": User.is_active}
    rows = (
        await User.update({columns[name]: value for name, value in changes.items()})
        .where(User.id == user_id)
        .returning(*USER_COLUMNS)
        .run()
    )
    user = cast(UserRecord, rows[0])
    if "is_active" in changes:
        event_type = "user.activated" if changes["is_active"] else "user.deactivated"
    else:
        event_type = "user.updated"
    await record_event(
        events.USER,
        user_id,
        event_type,
        {"user_id": user_id, "email": user["email"], "role": user["role"], "changes": changes},
    )
    return user
