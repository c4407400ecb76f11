"""The outbox's statements: its one writer's INSERTs, the payloads built in SQL, the probes.

:mod:`flowforge.outbox.writer` runs :data:`INSERT_EVENT` / :data:`INSERT_EVENTS`;
the hot paths write a change and its event in one statement with
:func:`insert_from` and the payload builders below, which follow the event
contract's key lists (:mod:`flowforge.core.events`);
:mod:`flowforge.outbox.status` runs :data:`HEALTH`, :data:`STATUS` and
:data:`REQUEUE`.
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.core.events import API_KEY_REVOKED_KEYS, CONTRACT, STEP_LOGGED_KEYS

# -- the writer --------------------------------------------------------------------------

INSERT_EVENT: Final[LiteralString] = """
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
VALUES ($1, $2, $3, $4::jsonb)
RETURNING id
"""

# Many events in one round trip. WITH ORDINALITY + ORDER BY keeps the given
# order, so each row's seq (its publish order) follows the list.
INSERT_EVENTS: Final[LiteralString] = """
INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
SELECT e.aggregate_type, e.aggregate_id, e.event_type, e.payload::jsonb
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[])
    WITH ORDINALITY AS e(aggregate_type, aggregate_id, event_type, payload, n)
ORDER BY e.n
RETURNING id
"""


def insert_from(
    source: LiteralString,
    *,
    aggregate_type: LiteralString,
    aggregate_id: LiteralString,
    event_type: LiteralString,
    payload: LiteralString,
) -> LiteralString:
    """``INSERT INTO outbox ... SELECT ... FROM <source>``: one event per source row.

    For data-modifying CTEs that write a change and its event in one
    statement; `payload` comes from the SQL payload builders below,
    `event_type` is a SQL expression (a quoted literal or a parameter).
    """
    return f"""INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
    SELECT '{aggregate_type}', {aggregate_id}, {event_type}, {payload}
    FROM {source}"""  # noqa: S608 - literal fragments; values are bind parameters


# -- the event contract's payloads, built in SQL (one round trip with the change) ----


def iso(expression: LiteralString) -> LiteralString:
    """SQL for a timestamptz as the ISO 8601 text Python's ``isoformat()`` gives (UTC).

    Keeps SQL-built payloads identical in form to Python-built ones whatever
    the session's TimeZone is.
    """
    return f"to_char({expression} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"


def _jsonb_object(
    values: dict[str, LiteralString], keys: tuple[LiteralString, ...]
) -> LiteralString:
    if set(values) != set(keys):
        raise ValueError(f"SQL payload keys {sorted(values)} differ from {sorted(keys)}")
    pairs: list[LiteralString] = [f"'{key}', {values[key]}" for key in keys]
    return f"jsonb_build_object({', '.join(pairs)})"


def run_payload_sql(
    alias: LiteralString, previous_status: LiteralString, event_type: str
) -> LiteralString:
    """``jsonb_build_object(...)`` of `event_type`'s payload from the run row `alias`."""
    values: dict[str, LiteralString] = {
        "run_id": f"{alias}.id",
        "workflow_id": f"{alias}.workflow_id",
        "status": f"{alias}.status",
        "previous_status": previous_status,
        "error": f"{alias}.error",
        "started_at": iso(f"{alias}.started_at"),
        "finished_at": iso(f"{alias}.finished_at"),
        "trigger_type": f"{alias}.trigger_type",
        "triggered_by_user_id": f"{alias}.triggered_by_user_id",
        "inputs": f"{alias}.inputs",
        "idempotency_key": f"{alias}.idempotency_key",
        "workflow_version": f"{alias}.workflow_version",
        "outputs": f"{alias}.outputs",
        "next_attempt_at": iso(f"{alias}.next_attempt_at"),
    }
    keys = CONTRACT[event_type].keys
    return _jsonb_object({key: values[key] for key in keys}, keys)


def step_logged_payload_sql(alias: LiteralString, workflow_id: LiteralString) -> LiteralString:
    """``jsonb_build_object(...)`` of run.step_logged from the step-log row `alias`."""
    values: dict[str, LiteralString] = {
        "run_id": f"{alias}.run_id",
        "workflow_id": workflow_id,
        "step_log_id": f"{alias}.id",
        "step_id": f"{alias}.step_id",
        "step_position": f"{alias}.step_position",
        "step_name": f"{alias}.step_name",
        "attempt": f"{alias}.attempt",
        "status": f"{alias}.status",
        "error": f"{alias}.error",
        "started_at": iso(f"{alias}.started_at"),
        "finished_at": iso(f"{alias}.finished_at"),
    }
    return _jsonb_object(values, STEP_LOGGED_KEYS)


def api_key_revoked_payload_sql(alias: LiteralString, named: LiteralString) -> LiteralString:
    """``jsonb_build_object(...)`` of api_key.revoked from the key row `alias`;
    `named` is the key the revocation named (SQL)."""
    values: dict[str, LiteralString] = {
        "api_key_id": f"{alias}.id",
        "user_id": f"{alias}.user_id",
        "prefix": f"{alias}.prefix",
        "cascaded_from": f"CASE WHEN {alias}.id = {named} THEN NULL ELSE {named} END",
    }
    return _jsonb_object(values, API_KEY_REVOKED_KEYS)


# -- status (flowforge.outbox.status) ------------------------------------------------------

HEALTH: Final[LiteralString] = """
SELECT
    GREATEST(0, COALESCE(EXTRACT(EPOCH FROM now() - (
        SELECT created_at FROM outbox
        WHERE published_at IS NULL AND dead_lettered_at IS NULL
        ORDER BY seq LIMIT 1
    )), 0))::float8 AS lag_seconds,
    (SELECT count(*) FROM outbox WHERE dead_lettered_at IS NOT NULL) AS dead_lettered
"""

STATUS: Final[LiteralString] = """
SELECT
    (SELECT count(*) FROM outbox
        WHERE published_at IS NULL AND dead_lettered_at IS NULL) AS unpublished,
    (SELECT count(*) FROM outbox
        WHERE published_at IS NULL AND dead_lettered_at IS NULL AND attempts > 0) AS retrying,
    (SELECT count(*) FROM outbox AS dead
        JOIN outbox AS o
            ON o.aggregate_type = dead.aggregate_type
            AND o.aggregate_id = dead.aggregate_id
            AND o.published_at IS NULL
            AND o.dead_lettered_at IS NULL
            AND o.seq > dead.seq
        WHERE dead.dead_lettered_at IS NOT NULL) AS held,
    (SELECT count(*) FROM outbox WHERE published_at IS NOT NULL) AS published,
    (SELECT min(published_at) FROM outbox WHERE published_at IS NOT NULL) AS oldest_published_at,
    (SELECT created_at FROM outbox
        WHERE published_at IS NULL AND dead_lettered_at IS NULL
        ORDER BY seq LIMIT 1) AS oldest_unpublished_at
"""

REQUEUE: Final[LiteralString] = """
WITH requeued AS (
    UPDATE outbox
    SET dead_lettered_at = NULL, attempts = 0, next_attempt_at = now()
    WHERE dead_lettered_at IS NOT NULL AND ($1::uuid[] IS NULL OR id = ANY($1::uuid[]))
    RETURNING id
)
SELECT id, pg_notify('flowforge_outbox', '') FROM requeued
"""
