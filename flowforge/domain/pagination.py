"""Keyset (cursor) pagination on ``(created_at, id)``, newest first.

A cursor is opaque to clients: ``<created_at as microseconds since the Unix
epoch>_<id as 32 hex digits>``, the position of the last item of a page. Every
string of that form (:data:`CURSOR_PATTERN`, which the API's schema publishes)
names a position, so a cursor the schema accepts is never refused. The next page is the rows strictly
"before" it in ``(created_at DESC, id DESC)`` order, which the composite
indexes serve directly, so page N costs the same as page 1 and rows inserted
meanwhile never shift or repeat items.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import TypeVar, cast
from uuid import UUID

from flowforge.core.errors import InvalidCursorError

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
CURSOR_PATTERN = r"^[0-9]{1,17}_[0-9a-f]{32}$"
MAX_CURSOR_LENGTH = 50
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)

Position = tuple[datetime.datetime, UUID]
# A record of a paged list: keyed by created_at and id.
R = TypeVar("R", bound=Mapping[str, object])


def encode_cursor(created_at: datetime.datetime, item_id: UUID) -> str:
    return f"{(created_at - _EPOCH) // _MICROSECOND}_{item_id.hex}"


def decode_cursor(cursor: str | None) -> Position | None:
    """The position a cursor names; InvalidCursorError for anything else."""
    if cursor is None:
        return None
    if not _CURSOR.fullmatch(cursor):
        raise InvalidCursorError()
    micros, id_hex = cursor.split("_")
    return _EPOCH + int(micros) * _MICROSECOND, UUID(hex=id_hex)


def page(rows: Sequence[R], limit: int) -> tuple[list[R], str | None]:
    """Split `limit + 1` fetched rows into the page and the next page's cursor."""
    items = list(rows[:limit])
    if len(rows) > limit:
        last = items[-1]
        return items, encode_cursor(
            cast(datetime.datetime, last["created_at"]), cast(UUID, last["id"])
        )
    return items, None
