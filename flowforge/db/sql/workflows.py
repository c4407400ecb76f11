"""The workflow statements (flowforge.domain.workflows).

Workflow CRUD is on the query builder; raw are the multi-row insert of a
workflow's steps (one array per column: the builder sends one parameter per
value) and two fragments the builder queries select as columns (a workflow's
steps as an array of rows, and its step count).
"""

from __future__ import annotations

from typing import Final, LiteralString

from piccolo.columns import Column

from flowforge.db.sql.quote import column_list
from flowforge.db.tables import WorkflowStep

STEP_COLUMNS: Final[tuple[Column, ...]] = (
    WorkflowStep.id,
    WorkflowStep.workflow_id,
    WorkflowStep.version,
    WorkflowStep.position,
    WorkflowStep.name,
    WorkflowStep.action_type,
    WorkflowStep.config,
    WorkflowStep.retry_policy,
    WorkflowStep.created_at,
    WorkflowStep.updated_at,
)
STEP_FIELDS: Final = tuple(column._meta.db_column_name for column in STEP_COLUMNS)
# The step column list for the raw SQL below, from the Table (a renamed column
# changes it, and tests/test_sql_statements.py prepares the result).
STEP_COLUMN_LIST: Final = column_list(*STEP_COLUMNS)

# All steps of version $2 in one round trip: one array per column, unnested
# into rows. (The builder's multi-row insert sends one parameter per value.)
INSERT_STEPS: Final[LiteralString] = f"""
    INSERT INTO workflow_steps (workflow_id, version, position, name, action_type, config,
                                retry_policy)
    SELECT $1, $2, s.position, s.name, s.action_type, s.config::jsonb, s.retry_policy::jsonb
    FROM unnest($3::int[], $4::text[], $5::text[], $6::text[], $7::text[])
        AS s(position, name, action_type, config, retry_policy)
    RETURNING {STEP_COLUMN_LIST}
"""  # noqa: S608 - column names from the Table; every value is a bind parameter

# A new version whose steps are the previous version's (a trigger change):
# new rows, so each version owns its steps.
COPY_STEPS: Final[LiteralString] = """
    INSERT INTO workflow_steps (workflow_id, version, position, name, action_type, config,
                                retry_policy)
    SELECT workflow_id, $2, position, name, action_type, config, retry_policy
    FROM workflow_steps WHERE workflow_id = $1 AND version = $2 - 1
"""

# Columns computed in the workflow's own SELECT (one round trip): the steps of
# its current version in order as an array of rows, and their count.
STEPS_OF_WORKFLOW: Final[LiteralString] = f"""ARRAY(
    SELECT ROW({STEP_COLUMN_LIST}) FROM workflow_steps s
    WHERE s.workflow_id = "workflows"."id" AND s.version = "workflows"."version"
    ORDER BY s.position)"""  # noqa: S608
# The name of a workflow's named concurrency limit (null: none), as a column.
LIMIT_NAME: Final[LiteralString] = (
    '(SELECT l.name FROM concurrency_limits l WHERE l.id = "workflows"."concurrency_limit_id")'
)
# How many workflows use a concurrency limit, as a column of concurrency_limits.
LIMIT_WORKFLOW_COUNT: Final[LiteralString] = (
    '(SELECT count(*) FROM workflows w WHERE w.concurrency_limit_id = "concurrency_limits"."id")'
)
STEP_COUNT: Final[LiteralString] = (
    '(SELECT count(*) FROM workflow_steps s WHERE s.workflow_id = "workflows"."id" '
    'AND s.version = "workflows"."version")'
)
