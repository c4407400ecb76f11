"""Retry policies checked by the database (issue 18), step 1 of 2: NOT VALID.

``workflow_steps_retry_policy_valid``: ``CHECK (flowforge_retry_policy_valid(retry_policy))``.
The function (IMMUTABLE, so a CHECK may call it) accepts exactly what the API's
``RetryPolicy`` accepts (flowforge/api/schemas.py; tests/test_retry_policy_check.py
runs both over the same policies): an object with at most ``max_attempts`` (an
integral number, 1-100), ``backoff`` (an object with at most
``initial_seconds`` (0 < s <= 86,400), ``max_seconds`` (0 < s <= 2,592,000,
and not below initial_seconds, defaults 1 and 300 when absent) and
``multiplier`` (1-10)) and ``jitter`` (0-1). ``{}`` is one attempt, no retry.
Numbers are compared as the API compares them, rounded to a double
(``flowforge_json_double``). So raw SQL and the domain code cannot store a
policy that flowforge/domain/retries.py would misread.

Added ``NOT VALID``: a catalog change under a short ACCESS EXCLUSIVE lock
(bounded, retried: flowforge/db/online.py), checked for every new row from then
on without scanning the existing ones; the next migration validates them.
Raw SQL (Piccolo cannot add a constraint NOT VALID); ``StateOnlyConstraints``
records the constraint in Piccolo's state, as flowforge/db/tables.py declares it.
Backwards drops the constraint and the functions.
"""

from piccolo.constraints import Check

from flowforge.db.online import OnlineMigration, StateOnlyConstraints

ID = "2026-12-07T23:00:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "workflow_steps_retry_policy_valid, NOT VALID (issue 18)"

NAME = "workflow_steps_retry_policy_valid"
CONDITION = "flowforge_retry_policy_valid(retry_policy)"

# A JSON number as the API reads it (a Python float: a double), NULL for any
# other JSON type. Magnitudes past a double's range stay exact (every bound is
# far below them; Python reads them as inf), and below its smallest subnormal
# they are 0 (as Python rounds them): the cast would raise for both.
DOUBLE_FUNCTION = """
CREATE OR REPLACE FUNCTION flowforge_json_double(value jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
SELECT CASE
    WHEN jsonb_typeof(value) <> 'number' THEN NULL
    WHEN abs(value::numeric) >= 1e308 THEN value::numeric
    WHEN abs(value::numeric) < 2.5e-324 THEN 0
    ELSE value::numeric::float8::numeric
END
$$
"""

# flowforge.api.schemas.RetryPolicy and Backoff, in SQL. Keep the two in step:
# tests/test_retry_policy_check.py fails when they disagree on a policy.
VALID_FUNCTION = """
CREATE OR REPLACE FUNCTION flowforge_retry_policy_valid(policy jsonb) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    backoff jsonb := policy -> 'backoff';
    attempts numeric := flowforge_json_double(policy -> 'max_attempts');
    jitter numeric := flowforge_json_double(policy -> 'jitter');
    initial numeric;
    maximum numeric;
    multiplier numeric;
BEGIN
    IF jsonb_typeof(policy) <> 'object' OR EXISTS (
        SELECT FROM jsonb_object_keys(policy) k
        WHERE k NOT IN ('max_attempts', 'backoff', 'jitter')
    ) THEN
        RETURN false;
    END IF;
    -- max_attempts: an integer (3.0 is 3; true and "3" are not), 1-100.
    IF policy ? 'max_attempts' AND (attempts IS NULL OR attempts <> trunc(attempts)
                                    OR attempts NOT BETWEEN 1 AND 100) THEN
        RETURN false;
    END IF;
    IF policy ? 'jitter' AND (jitter IS NULL OR jitter NOT BETWEEN 0 AND 1) THEN
        RETURN false;
    END IF;
    IF backoff IS NULL THEN
        RETURN true;
    END IF;
    IF jsonb_typeof(backoff) <> 'object' OR EXISTS (
        SELECT FROM jsonb_object_keys(backoff) k
        WHERE k NOT IN ('initial_seconds', 'max_seconds', 'multiplier')
    ) THEN
        RETURN false;
    END IF;
    initial := flowforge_json_double(backoff -> 'initial_seconds');
    maximum := flowforge_json_double(backoff -> 'max_seconds');
    multiplier := flowforge_json_double(backoff -> 'multiplier');
    IF (backoff ? 'initial_seconds' AND (initial IS NULL OR initial <= 0 OR initial > 86400))
        OR (backoff ? 'max_seconds' AND (maximum IS NULL OR maximum <= 0 OR maximum > 2592000))
        OR (backoff ? 'multiplier' AND (multiplier IS NULL OR multiplier NOT BETWEEN 1 AND 10))
    THEN
        RETURN false;
    END IF;
    -- The defaults of the absent ones (flowforge.domain.retries).
    RETURN COALESCE(maximum, 300) >= COALESCE(initial, 1);
END
$$
"""

ADD = f"ALTER TABLE workflow_steps ADD CONSTRAINT {NAME} CHECK ({CONDITION}) NOT VALID"
COMMENT = (
    f"COMMENT ON CONSTRAINT {NAME} ON workflow_steps IS "
    "'A retry policy the API accepts: flowforge.api.schemas.RetryPolicy "
    "(docs/decisions/16-run-queue.md)'"
)
DROP = f"ALTER TABLE workflow_steps DROP CONSTRAINT IF EXISTS {NAME}"
DROP_FUNCTIONS = [
    "DROP FUNCTION IF EXISTS flowforge_retry_policy_valid(jsonb)",
    "DROP FUNCTION IF EXISTS flowforge_json_double(jsonb)",
]


async def forwards() -> StateOnlyConstraints:
    manager = StateOnlyConstraints(
        migration_id=ID, app_name="flowforge", description=DESCRIPTION, wrap_in_transaction=False
    )

    async def run() -> None:
        async with OnlineMigration.connect("retry policy check") as migration:
            await migration.run("functions", DOUBLE_FUNCTION, VALID_FUNCTION)
            await migration.add_constraint("workflow_steps", NAME, ADD)
            await migration.run("comment", COMMENT)

    async def run_backwards() -> None:
        async with OnlineMigration.connect("retry policy check") as migration:
            await migration.locked(f"workflow_steps: drop {NAME}", DROP)
            await migration.run("drop functions", *DROP_FUNCTIONS)

    manager.add_raw(run)
    manager.add_raw_backwards(run_backwards)
    # Piccolo's state only (no SQL: StateOnlyConstraints): flowforge/db/tables.py
    # declares it.
    manager.add_constraint(
        table_class_name="WorkflowStep",
        tablename="workflow_steps",
        constraint_name=NAME,
        constraint_class=Check,
        params={"condition": CONDITION},
        schema=None,
    )
    return manager
