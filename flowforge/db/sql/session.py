"""Transaction control (flowforge.db.engine): BEGIN with the per-transaction settings, COMMIT,
ROLLBACK.

Behind a transaction pooler the server-side limits cannot be startup
parameters, so each transaction starts with ``BEGIN; SET LOCAL ...``: one
simple query, no extra round trip.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final, LiteralString

from flowforge.db.sql.quote import quote_ident, quote_literal

BEGIN: Final[LiteralString] = "BEGIN"
COMMIT: Final[LiteralString] = "COMMIT"
ROLLBACK: Final[LiteralString] = "ROLLBACK"
SET_LOCAL: Final[LiteralString] = "SET LOCAL {name} = {value}"

_SETTING_NAME: Final = re.compile(r"^[a-z_][a-z0-9_.]*$")


def set_local(name: str, value: str) -> str:
    """:data:`SET_LOCAL` of one setting (a custom ``prefix.name`` too)."""
    if not _SETTING_NAME.match(name):
        raise ValueError(f"not a setting name: {name!r}")
    return SET_LOCAL.format(
        name=".".join(quote_ident(part) for part in name.split(".")), value=quote_literal(value)
    )


def begin_statement(local_settings: Mapping[str, str]) -> str:
    """``BEGIN`` followed by ``SET LOCAL`` of each setting: one round trip (simple query)."""
    return "; ".join([BEGIN, *(set_local(name, value) for name, value in local_settings.items())])


# The request's actor for the run-history triggers (``api_key:<id>``), set in
# the BEGIN the engine sends anyway when the caller is known before the
# transaction starts (a cached principal, flowforge.api.deps): no round trip.
ACTOR_SETTING: Final = "flowforge.actor"


def with_actor(begin: str, actor: str) -> str:
    """`begin` (a :func:`begin_statement`) that also sets :data:`ACTOR_SETTING` locally."""
    return f"{begin}; {set_local(ACTOR_SETTING, actor)}"
