"""The workflow-version statements (flowforge.domain.workflows, flowforge.jobs.versions).

A new definition of a workflow is one compare-and-set: the UPDATE of the
workflow row that bumps its ``version`` and ``revision`` only when the revision
is the one the client based its change on (``If-Match``), and the INSERT of the
version row, in one statement. Its steps follow in one more (INSERT_STEPS).
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.db.sql.quote import column_list
from flowforge.db.sql.workflows import STEP_COLUMN_LIST
from flowforge.db.tables import WorkflowVersion

VERSION_TABLE_COLUMNS: Final = (
    WorkflowVersion.id,
    WorkflowVersion.workflow_id,
    WorkflowVersion.version,
    WorkflowVersion.trigger_type,
    WorkflowVersion.trigger_config,
    WorkflowVersion.created_by_user_id,
    WorkflowVersion.created_at,
)
VERSION_FIELDS: Final = tuple(column._meta.db_column_name for column in VERSION_TABLE_COLUMNS)
VERSION_COLUMNS: Final = column_list(*VERSION_TABLE_COLUMNS)

# The next version of a workflow, if its revision is one of $3 (NULL: any) and
# it is visible ($2: owner, NULL: any): bumps version and revision, applies the
# trigger change ($4, $5: NULL keeps the current one), snapshots the trigger
# into the new version row. No row: not found, or a stale revision (the caller
# tells which). Concurrent calls serialise on the workflow's row lock, and the
# second re-checks the revision the first wrote: at most one of two editors
# holding the same ETag wins.
NEW_VERSION: Final[LiteralString] = f"""
WITH bumped AS (
    UPDATE workflows SET version = version + 1, revision = revision + 1,
        trigger_type = coalesce($4::text, trigger_type),
        trigger_config = coalesce($5::jsonb, trigger_config)
    WHERE id = $1 AND ($2::uuid IS NULL OR owner_id = $2)
      AND ($3::int[] IS NULL OR revision = ANY($3::int[]))
    RETURNING id, owner_id, version, revision, trigger_type, trigger_config
), created AS (
    INSERT INTO workflow_versions (workflow_id, version, trigger_type, trigger_config,
                                   created_by_user_id)
    SELECT id, version, trigger_type, trigger_config, $6 FROM bumped
    RETURNING {VERSION_COLUMNS}
)
SELECT c.*, b.owner_id, b.revision FROM created c JOIN bumped b ON b.id = c.workflow_id
"""  # noqa: S608 - column names from the Table; every value is a bind parameter

# Steps of one version, in order, as an array of rows (the version's own SELECT).
STEPS_OF_VERSION: Final[LiteralString] = f"""ARRAY(
    SELECT ROW({STEP_COLUMN_LIST}) FROM workflow_steps s
    WHERE s.workflow_id = "workflow_versions"."workflow_id"
      AND s.version = "workflow_versions"."version"
    ORDER BY s.position)"""  # noqa: S608

# -- backfill (flowforge.jobs.versions) -------------------------------------------------

# Version 1 of the next `$2` workflows after id `$1` (keyset order), reconstructed
# from each workflow's current trigger (its current steps are version 1 already:
# the column's constant default). ON CONFLICT DO NOTHING: a rerun after a kill,
# and workflows whose version 1 the workflows_first_version trigger wrote, pass.
# Returns the last workflow id of the batch (NULL: none left) and how many
# versions it wrote.
BACKFILL_FIRST_VERSIONS: Final[LiteralString] = """
WITH batch AS (
    SELECT id, trigger_type, trigger_config, owner_id, created_at FROM workflows
    WHERE $1::uuid IS NULL OR id > $1
    ORDER BY id LIMIT $2
), written AS (
    INSERT INTO workflow_versions (workflow_id, version, trigger_type, trigger_config,
                                   created_by_user_id, created_at)
    SELECT id, 1, trigger_type, trigger_config, owner_id, created_at FROM batch
    ON CONFLICT ON CONSTRAINT workflow_versions_workflow_version_key DO NOTHING
    RETURNING 1
)
SELECT (SELECT id FROM batch ORDER BY id DESC LIMIT 1) AS last_id,
       (SELECT count(*) FROM written) AS written
"""

# Workflows whose current version has no row (what the backfill left to do).
WORKFLOWS_WITHOUT_CURRENT_VERSION: Final[LiteralString] = """
SELECT w.id FROM workflows w
WHERE NOT EXISTS (SELECT 1 FROM workflow_versions v
                  WHERE v.workflow_id = w.id AND v.version = w.version)
ORDER BY w.id LIMIT $1
"""
