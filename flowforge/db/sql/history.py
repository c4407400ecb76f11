"""Run history's statements (flowforge.domain.history): the actor, and a run's history page.

The history rows themselves are written by the database (the triggers of
``piccolo_migrations/flowforge_2026_12_07t19_14_40_000000.py``, docs/decisions/14-run-history.md):
nothing here inserts one. What the application adds is *who*: the
transaction-local setting ``flowforge.actor`` the triggers read, set with
``set_config(..., true)`` (gone at the transaction's end: nothing is left in a
pooled session, and flowforge.db.engine does not reset the connection for it).
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.db.sql.quote import column_list
from flowforge.db.sql.session import ACTOR_SETTING
from flowforge.db.tables import RunHistory

# The setting the history triggers read (when unset: "sql:" || session_user) is
# flowforge.db.sql.session.ACTOR_SETTING: set here inside a statement, or by the BEGIN.


def set_actor_sql(actor: LiteralString) -> LiteralString:
    """The SQL expression that sets this transaction's actor to `actor` (an SQL
    expression), for a statement already sent: it adds no round trip. Returns
    the actor."""
    return f"set_config('{ACTOR_SETTING}', {actor}, true)"


# For a job's or a command's own transaction (one round trip; not for requests:
# authentication sets the request's actor in its own statement, or the BEGIN
# does for a remembered key (flowforge.api.deps.request_transaction), see
# flowforge.db.sql.api_keys.AUTHENTICATE).
SET_ACTOR: Final[LiteralString] = f"SELECT {set_actor_sql('$1::text')}"

HISTORY_TABLE_COLUMNS: Final = (
    RunHistory.id,
    RunHistory.run_id,
    RunHistory.step_log_id,
    RunHistory.step_position,
    RunHistory.attempt,
    RunHistory.from_status,
    RunHistory.to_status,
    RunHistory.reason,
    RunHistory.actor,
    RunHistory.recorded_at,
)
HISTORY_COLUMNS_OF_H: Final = column_list(*HISTORY_TABLE_COLUMNS, alias="h")

# A page of one run's history, oldest first, after the keyset position
# ($3 recorded_at, $4 id; NULL for the first page), if the run is visible
# ($5: the owner it must belong to, NULL for an admin). The run is joined first
# and the history laterally: no row means "run not found or not yours", one row
# of NULLs "no history" (a run older than the history). run_created_at confines
# the read to the run's partition; the index (run_id, recorded_at, id) serves
# the order and the keyset.
RUN_HISTORY_PAGE: Final[LiteralString] = f"""
SELECT r.id AS visible_run_id, {HISTORY_COLUMNS_OF_H}
FROM workflow_runs r JOIN workflows w ON w.id = r.workflow_id
LEFT JOIN LATERAL (
    SELECT {HISTORY_COLUMNS_OF_H} FROM run_history h
    WHERE h.run_id = r.id AND h.run_created_at = r.created_at
      AND ($3::timestamptz IS NULL OR (h.recorded_at, h.id) > ($3::timestamptz, $4::uuid))
    ORDER BY h.recorded_at, h.id
    LIMIT $2
) h ON true
WHERE r.id = $1 AND ($5::uuid IS NULL OR w.owner_id = $5)
ORDER BY h.recorded_at, h.id
"""  # noqa: S608 - constant fragments; every value is a bind parameter
