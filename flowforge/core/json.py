"""JSON encoding for JSONB parameters: one encoder, compact, UUID and datetime aware."""

from __future__ import annotations

import datetime
import json
from typing import Any
from uuid import UUID


def _default(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    return json.dumps(
        value, default=_default, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys
    )


loads = json.loads
