"""The workflow-versions backfill (issue 17): version 1 of every existing workflow.

Run by the migration ``2026-12-07T19:14:50`` and by ``flowforge backfill_versions``
(the same code; idempotent). Existing steps and runs need no backfill: the
migration before adds ``workflow_steps.version`` and
``workflow_runs.workflow_version`` with the constant default 1, which pins them
to version 1 without touching a row. What is left is one ``workflow_versions``
row per workflow, reconstructed from its current trigger (its current steps are
version 1), written here in keyset batches of ``batch_size`` workflows, each
batch its own transaction: a killed run loses at most its open batch and a rerun
continues (a batch already written is skipped by ON CONFLICT DO NOTHING).
Workflows created meanwhile get their version 1 from the ``workflows_first_version``
trigger, which the migration creates before this runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from flowforge.core.logs import get_logger
from flowforge.db.engine import DB
from flowforge.db.sql.versions import (
    BACKFILL_FIRST_VERSIONS,
    WORKFLOWS_WITHOUT_CURRENT_VERSION,
)

logger = get_logger("flowforge.jobs.versions")

BATCH_SIZE = 1000


@dataclass(frozen=True)
class BackfillReport:
    batches: int
    written: int
    missing: list[UUID]  # workflows still without their current version (should be none)


async def _batch(after: UUID | None, batch_size: int) -> tuple[UUID | None, int]:
    async with DB.transaction():
        connection = DB.require_transaction().connection
        row = await connection.fetchrow(BACKFILL_FIRST_VERSIONS, after, batch_size)
    assert row is not None
    return row["last_id"], int(row["written"])


async def backfill_first_versions(
    *, batch_size: int = BATCH_SIZE, start_after: UUID | None = None, max_batches: int | None = None
) -> BackfillReport:
    """Write version 1 of every workflow that lacks one, `batch_size` workflows per transaction.

    ``start_after`` resumes after that workflow id (the log line of each batch
    names its last id); ``max_batches`` stops early (tests: a run cut short).
    Must not run inside a transaction: each batch commits.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    DB.require_no_transaction("the versions backfill")
    after, batches, written = start_after, 0, 0
    while max_batches is None or batches < max_batches:
        last, count = await _batch(after, batch_size)
        if last is None:
            break
        batches, written, after = batches + 1, written + count, last
        logger.info("versions.backfill_batch", batch=batches, written=count, last_id=str(last))
    async with DB.transaction():
        connection = DB.require_transaction().connection
        missing = [
            row["id"] for row in await connection.fetch(WORKFLOWS_WITHOUT_CURRENT_VERSION, 10)
        ]
    return BackfillReport(batches=batches, written=written, missing=missing)
