"""User operations (admin only at the API). They run in the caller's transaction and never commit.

Users are never deleted through the API: a user who owns workflows cannot be
(``workflows.owner_id`` is ON DELETE RESTRICT), and run history should keep its
``triggered_by_user_id``. Deactivating a user locks them out at once: every API
key of an inactive user is refused.
"""

from __future__ import annotations

from typing import Any, Final
from uuid import UUID

from flowforge import events
from flowforge.db.engine import DB
from flowforge.db.tables import Role
from flowforge.errors import ConflictError, NotFoundError
from flowforge.outbox import record_event
from flowforge.pagination import DEFAULT_LIMIT, decode_cursor, page

USER_COLUMNS: Final = "id, email, display_name, role, is_active, created_at, updated_at"

INSERT_USER = f"""
INSERT INTO users (email, display_name, role) VALUES ($1, $2, $3) RETURNING {USER_COLUMNS}
"""  # noqa: S608
GET_USER = f"SELECT {USER_COLUMNS} FROM users WHERE id = $1"  # noqa: S608
UPDATE_USER = f"""
UPDATE users SET display_name = $2, role = $3, is_active = $4 WHERE id = $1
RETURNING {USER_COLUMNS}
"""  # noqa: S608
LIST_USERS = f"""
SELECT {USER_COLUMNS} FROM users ORDER BY created_at DESC, id DESC LIMIT $1
"""  # noqa: S608
LIST_USERS_AFTER = f"""
SELECT {USER_COLUMNS} FROM users WHERE (created_at, id) < ($2, $3)
ORDER BY created_at DESC, id DESC LIMIT $1
"""  # noqa: S608


async def create_user(email: str, display_name: str, role: Role) -> dict[str, Any]:
    """Insert a user and its ``user.created`` event. A taken email is a ConflictError."""
    connection = DB.require_transaction().connection
    user = dict(await connection.fetchrow(INSERT_USER, email, display_name, role.value))
    await record_event(
        events.USER,
        user["id"],
        "user.created",
        {"user_id": user["id"], "email": user["email"], "role": user["role"]},
    )
    return user


async def get_user(user_id: UUID) -> dict[str, Any]:
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(GET_USER, user_id)
    if row is None:
        raise NotFoundError("User not found.", user_id=str(user_id))
    return dict(row)


async def list_users(
    *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of users, newest first."""
    position = decode_cursor(cursor)
    connection = DB.require_transaction().connection
    if position is None:
        rows = await connection.fetch(LIST_USERS, limit + 1)
    else:
        rows = await connection.fetch(LIST_USERS_AFTER, limit + 1, *position)
    return page([dict(row) for row in rows], limit)


async def update_user(
    user_id: UUID,
    *,
    display_name: str | None = None,
    role: Role | None = None,
    is_active: bool | None = None,
    acting_user_id: UUID | None = None,
) -> dict[str, Any]:
    """Change a user's display name, role or active flag, with its event.

    ``user.deactivated`` / ``user.activated`` when the active flag changes,
    ``user.updated`` otherwise; nothing changed, no event. An admin cannot
    deactivate or demote themselves (``acting_user_id``): that could leave
    nobody able to manage users.
    """
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(f"{GET_USER} FOR UPDATE", user_id)
    if row is None:
        raise NotFoundError("User not found.", user_id=str(user_id))
    before = dict(row)
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
    user = dict(
        await connection.fetchrow(
            UPDATE_USER,
            user_id,
            changes.get("display_name", before["display_name"]),
            changes.get("role", before["role"]),
            changes.get("is_active", before["is_active"]),
        )
    )
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
