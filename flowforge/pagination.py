"""Keyset (cursor) pagination on ``(created_at, id)``, newest first.

A cursor is opaque to clients: base64url of ``<created_at ISO>|<id>``, the
position of the last item of a page. The next page is the rows strictly
"before" it in ``(created_at DESC, id DESC)`` order, which the composite
indexes serve directly, so page N costs the same as page 1 and rows inserted
meanwhile never shift or repeat items.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from flowforge.errors import InvalidCursorError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR_LENGTH = 200

Position = tuple[datetime.datetime, UUID]


def encode_cursor(created_at: datetime.datetime, item_id: UUID) -> str:
    raw = f"{created_at.isoformat()}|{item_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Position | None:
    """The position a cursor names; InvalidCursorError for anything else."""
    if cursor is None:
        return None
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_text, id_text = raw.split("|")
        created_at = datetime.datetime.fromisoformat(created_text)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at, UUID(id_text)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidCursorError() from None


def page(rows: Sequence[Mapping[str, Any]], limit: int) -> tuple[list[Any], str | None]:
    """Split `limit + 1` fetched rows into the page and the next page's cursor."""
    items = list(rows[:limit])
    if len(rows) > limit:
        last = items[-1]
        return items, encode_cursor(last["created_at"], last["id"])
    return items, None
