"""Pruning's statements: the batched DELETEs of expired history (flowforge.jobs.retention).

Each batch locks its rows with SKIP LOCKED, so several pruners never wait on
each other.
"""

from __future__ import annotations

from typing import Final, LiteralString

OLD_PUBLISHED_EVENTS: Final[LiteralString] = """
SELECT id FROM outbox
WHERE published_at < now() - make_interval(secs => $1::float8)
ORDER BY published_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

# "id = ANY(ARRAY(...))" rather than a join: the planner cannot know the CTE's
# size and may hash-join it against a sequential scan of the whole table.
PRUNE_OUTBOX: Final[LiteralString] = f"""
WITH doomed AS ({OLD_PUBLISHED_EVENTS}),
deleted AS (
    DELETE FROM outbox WHERE id = ANY(ARRAY(SELECT id FROM doomed)) RETURNING 1
)
SELECT count(*) FROM deleted
"""  # noqa: S608 - composed from constants; values are bind parameters

OLD_FINISHED_RUNS: Final[LiteralString] = """
SELECT id, created_at FROM workflow_runs
WHERE status IN ('completed', 'failed', 'cancelled')
    AND finished_at < now() - make_interval(secs => $1::float8)
ORDER BY finished_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

# The step logs go by ON DELETE CASCADE. They are counted with the batch's
# run_created_at range too: run_step_logs is partitioned by it, and without it
# the count probes every partition's index (with it, only the batch's months).
PRUNE_RUNS: Final[LiteralString] = f"""
WITH doomed AS ({OLD_FINISHED_RUNS}),
logs AS (
    SELECT count(*) AS n FROM run_step_logs
    WHERE run_id = ANY(ARRAY(SELECT id FROM doomed))
        AND run_created_at >= (SELECT min(created_at) FROM doomed)
        AND run_created_at <= (SELECT max(created_at) FROM doomed)
),
deleted AS (
    DELETE FROM workflow_runs WHERE id = ANY(ARRAY(SELECT id FROM doomed)) RETURNING 1
)
SELECT (SELECT count(*) FROM deleted) AS runs, (SELECT n FROM logs) AS step_logs
"""  # noqa: S608 - composed from constants; values are bind parameters

# For the run batches' transaction. The cascade runs one statement per deleted
# run, "DELETE FROM run_step_logs WHERE $1 = run_id AND $2 = run_created_at",
# through a cached plan. On a partitioned table the plan cache finds a custom
# plan cheaper than the generic one and re-plans that statement for every run
# (measured with auto_explain: 0.01 ms to run, the rest planning; 60-150 ms of
# trigger time per 1,000 runs against 7-15 ms before partitioning). A generic
# plan prunes the partitions at execution time instead.
# Set for the batch's statement only (its cascade fires before it returns), then
# the caller's value is restored: local to the transaction either way, so
# nothing outlives it (safe behind a transaction pooler).
GENERIC_PLANS: Final[LiteralString] = (
    "SELECT current_setting('plan_cache_mode') AS previous, "
    "set_config('plan_cache_mode', 'force_generic_plan', true)"
)

RESTORE_PLAN_CACHE_MODE: Final[LiteralString] = "SELECT set_config('plan_cache_mode', $1, true)"

# The dry run's count of expired runs and their step logs stays raw SQL: on the
# builder (two counts, the step logs through an IN subquery) the planner
# hash-joins a scan of the step logs, 2.3x (alone) to 5.7x (32 concurrent) the
# cost of this statement, whose CTE it sizes low and probes per run (measured
# for issue 10 on the 1M-run benchmark data set, a day past retention, as a
# benchmarks/cold.py case; the target is 1.5x).
# $2: the partitions the dry run would drop first, whose rows it reports apart
# (the real prune drops them before deleting row by row: counted here too, they
# were counted twice).
COUNT_RUNS: Final[LiteralString] = """
WITH doomed AS (
    SELECT id FROM workflow_runs
    WHERE status IN ('completed', 'failed', 'cancelled')
        AND finished_at < now() - make_interval(secs => $1::float8)
)
SELECT (SELECT count(*) FROM doomed) AS runs,
    (SELECT count(*) FROM run_step_logs WHERE run_id IN (SELECT id FROM doomed)
        AND tableoid <> ALL($2::text[]::regclass[])) AS step_logs
"""
