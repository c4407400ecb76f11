"""The run queue (issue 18): claims, concurrency limits, fairness, retries, leases.

Real PostgreSQL and real concurrency: every claimer below is its own
transaction on its own connection, racing the others.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from flowforge.core.errors import ConcurrencyLimitError, InvalidTransitionError
from flowforge.db.engine import DB
from flowforge.db.tables import ConcurrencyLimit, RunStatus, User, Workflow, WorkflowStep
from flowforge.domain import queue, runs
from flowforge.jobs.reaper import reap_stuck_runs
from tests import relay_support as rs
from tests import support

pytestmark = pytest.mark.usefixtures("db")


async def make_owner() -> uuid.UUID:
    row = (
        await User.insert(User(email=f"{uuid.uuid4().hex[:8]}@example.com", display_name="Q"))
        .returning(User.id)
        .run()
    )
    return row[0]["id"]


async def make_workflow(
    owner: uuid.UUID,
    *,
    max_concurrency: int | None = None,
    limit_id: uuid.UUID | None = None,
    queue_name: str = "default",
    retry_policy: dict[str, Any] | None = None,
) -> uuid.UUID:
    row = (
        await Workflow.insert(
            Workflow(
                owner_id=owner,
                name=f"wf-{uuid.uuid4().hex[:6]}",
                max_concurrency=max_concurrency,
                concurrency_limit_id=limit_id,
                queue=queue_name,
            )
        )
        .returning(Workflow.id)
        .run()
    )
    workflow_id: uuid.UUID = row[0]["id"]
    await WorkflowStep.insert(
        WorkflowStep(
            workflow_id=workflow_id,
            position=0,
            name="only",
            action_type="noop",
            retry_policy=retry_policy or {},
        )
    ).run()
    return workflow_id


async def make_limit(name: str, max_running: int) -> uuid.UUID:
    row = (
        await ConcurrencyLimit.insert(ConcurrencyLimit(name=name, max_running=max_running))
        .returning(ConcurrencyLimit.id)
        .run()
    )
    return row[0]["id"]


async def enqueue(workflow_id: uuid.UUID, count: int, **values: Any) -> None:
    """`count` pending runs, in one statement (COPY-speed is not needed here)."""
    columns = ", ".join(["workflow_id", *values])
    placeholders = ", ".join(f"${i}" for i in range(2, len(values) + 2))
    select = f"$1::uuid{', ' + placeholders if placeholders else ''}"
    await DB.fetch(
        f"INSERT INTO workflow_runs ({columns}) SELECT {select} FROM generate_series(1, {count})",
        workflow_id,
        *values.values(),
    )


async def queued() -> int:
    rows = await DB.fetch(
        "SELECT count(*) AS n FROM workflow_runs WHERE status IN ('pending', 'awaiting_retry')"
    )
    return int(rows[0]["n"])


async def claim(worker: str, limit: int = 1, **filters: Any) -> list[Any]:
    async with DB.transaction():
        return await queue.claim_runs(worker, limit=limit, **filters)


async def finish(run_id: uuid.UUID) -> None:
    async with DB.transaction():
        await runs.transition_run(run_id, "complete")


async def restart_pool(**sizes: int) -> None:
    """(Re)start the engine's pool with every connection opened up front, waiting
    while the shared server has no free connection slots (other suites run there)."""

    async def started() -> bool:
        await DB.close_connection_pool()
        await DB.start_connection_pool(**sizes)
        return DB.pool is not None

    await rs.wait_for(started, within=120, interval=1.0)


@pytest.fixture
async def wide_pool(database_url: str) -> AsyncIterator[None]:
    """A pool with a connection per claimer (the default pool is smaller), all
    opened before the test: none is opened (and refused) while claimers race."""
    await restart_pool(min_size=56, max_size=56)
    yield
    await restart_pool()


async def running_count(connection: asyncpg.Connection, workflow_ids: list[uuid.UUID]) -> int:
    count: int = await connection.fetchval(
        "SELECT count(*) FROM workflow_runs WHERE status = 'running' AND workflow_id = ANY($1)",
        workflow_ids,
    )
    return count


# -- claims ------------------------------------------------------------------------------


async def test_a_claim_moves_due_runs_to_running_with_a_lease_and_an_event() -> None:
    workflow = await make_workflow(await make_owner())
    await enqueue(workflow, 3)
    claimed = await claim("worker-a", limit=2)
    assert len(claimed) == 2
    for run in claimed:
        assert run["status"] == "running" and run["claimed_by"] == "worker-a"
        assert run["claims"] == 1 and run["started_at"] is not None
    events = await DB.fetch(
        "SELECT payload FROM outbox WHERE event_type = 'run.started' ORDER BY seq"
    )
    assert len(events) == 2
    rest = await claim("worker-b", limit=5)
    assert len(rest) == 1 and rest[0]["claimed_by"] == "worker-b"
    assert await claim("worker-c", limit=5) == []


async def test_claims_filter_by_workflow_and_by_queue() -> None:
    owner = await make_owner()
    first = await make_workflow(owner, queue_name="emails")
    second = await make_workflow(owner)
    await enqueue(first, 2)
    await enqueue(second, 2)
    assert {r["workflow_id"] for r in await claim("w", limit=10, queue="emails")} == {first}
    assert {r["workflow_id"] for r in await claim("w", 10, workflow_ids=[second])} == {second}
    assert await claim("w", limit=10) == []


async def test_a_delayed_run_is_not_claimed_before_not_before() -> None:
    workflow = await make_workflow(await make_owner())
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    await enqueue(workflow, 1, not_before=later)
    assert await claim("w", limit=5) == []
    await DB.fetch("UPDATE workflow_runs SET not_before = now() - interval '1 second'")
    assert len(await claim("w", limit=5)) == 1


async def test_higher_priority_is_claimed_first() -> None:
    workflow = await make_workflow(await make_owner())
    await enqueue(workflow, 3, priority=0)
    await enqueue(workflow, 2, priority=10)
    claimed = await claim("w", limit=2)
    assert [run["priority"] for run in claimed] == [10, 10]


DRAIN_RUNS = 100_000
DRAIN_WORKERS = 20
DRAIN_BATCH = 100


async def test_twenty_workers_drain_the_queue_claiming_each_run_exactly_once(
    wide_pool: None,
) -> None:
    """20 concurrent workers drain 100,000 runs (issue 18), claiming 100 at a time.

    Checked in the database afterwards: every run is running, claimed once
    (``claims = 1``), and has exactly one ``run.started`` event. Not asserted:
    that a claim is never empty while due runs remain. The design does not
    promise it: a claim skips locked runs (SKIP LOCKED), and a concurrent claim
    locks a fair share plus one per workflow, more than it takes, so for a
    moment runs can be locked by a claimer that leaves them queued. An empty
    claim with runs left is counted (and printed); the worker asks again.
    """
    owner = await make_owner()
    workflows = [await make_workflow(owner) for _ in range(4)]
    # One INSERT ... generate_series: 25,000 runs of each workflow, interleaved.
    enqueue_started = time.perf_counter()
    await DB.fetch(
        "INSERT INTO workflow_runs (workflow_id) "
        "SELECT ($1::uuid[])[1 + i % cardinality($1::uuid[])] FROM generate_series(1, $2) i",
        workflows,
        DRAIN_RUNS,
    )
    enqueue_seconds = time.perf_counter() - enqueue_started
    seen: Counter[uuid.UUID] = Counter()
    empty_while_queued = 0

    async def worker(number: int) -> None:
        nonlocal empty_while_queued
        while True:
            claimed = await claim(f"worker-{number}", limit=DRAIN_BATCH)
            if not claimed:
                # Empty: drained, or what is left is locked by other claimers.
                if not await queued():
                    return
                empty_while_queued += 1
                await asyncio.sleep(0.001)
            seen.update(run["id"] for run in claimed)

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(DRAIN_WORKERS))), 120)
    seconds = time.perf_counter() - started
    print(
        f"\nenqueued {DRAIN_RUNS} runs in {enqueue_seconds:.1f} s; "
        f"{DRAIN_WORKERS} workers drained {len(seen)} runs in {seconds:.1f} s "
        f"({len(seen) / seconds:.0f} runs/s); empty claims with runs left: {empty_while_queued}"
    )
    assert len(seen) == DRAIN_RUNS
    assert max(seen.values()) == 1
    # In the database: every run running, each claimed once ...
    runs_by_state = await DB.fetch(
        "SELECT status, claims, count(*) AS n FROM workflow_runs GROUP BY status, claims"
    )
    assert [dict(row) for row in runs_by_state] == [
        {"status": "running", "claims": 1, "n": DRAIN_RUNS}
    ]
    # ... with exactly one run.started event: no double claim got committed.
    events = await DB.fetch(
        "SELECT count(*) AS n, count(DISTINCT aggregate_id) AS runs FROM outbox "
        "WHERE event_type = 'run.started'"
    )
    assert dict(events[0]) == {"n": DRAIN_RUNS, "runs": DRAIN_RUNS}
    print(f"checked in {time.perf_counter() - started - seconds:.1f} s")


# -- concurrency limits ------------------------------------------------------------------


async def race_against_a_limit(
    database_url: str, workflows: list[uuid.UUID], limit: int, runs_total: int
) -> tuple[int, int]:
    """50 claimers (and finishers) race; a sampler on its own connection counts
    running runs continuously. Returns (max running seen, samples)."""
    stop = asyncio.Event()
    samples: list[int] = []

    async def sampler() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            while not stop.is_set():
                samples.append(await running_count(connection, workflows))
        finally:
            await connection.close()

    done: list[uuid.UUID] = []

    async def claimer(number: int) -> None:
        while len(done) < runs_total:
            claimed = await claim(f"claimer-{number}", limit=3)
            for run in claimed:
                await asyncio.sleep(0.002)  # "work", holding the slot
                await finish(run["id"])
                done.append(run["id"])
            if not claimed:
                await asyncio.sleep(0.001)

    sampling = asyncio.create_task(sampler())
    await asyncio.wait_for(asyncio.gather(*(claimer(n) for n in range(50))), timeout=120)
    stop.set()
    await sampling
    assert len(done) == runs_total == len(set(done))
    print(f"\nlimit {limit}: {len(samples)} samples, peak {max(samples)}, runs {runs_total}")
    return max(samples), len(samples)


async def test_fifty_claimers_never_exceed_a_workflow_limit_of_three(
    wide_pool: None, database_url: str
) -> None:
    workflow = await make_workflow(await make_owner(), max_concurrency=3)
    await enqueue(workflow, 300)
    peak, samples = await race_against_a_limit(database_url, [workflow], 3, 300)
    assert peak == 3 and samples > 50


async def test_fifty_claimers_never_exceed_a_named_limit_shared_by_workflows(
    wide_pool: None, database_url: str
) -> None:
    owner = await make_owner()
    shared = await make_limit("payments-api", 3)
    workflows = [await make_workflow(owner, limit_id=shared) for _ in range(3)]
    # One of them also has a workflow limit of its own.
    workflows.append(await make_workflow(owner, limit_id=shared, max_concurrency=1))
    for workflow in workflows:
        await enqueue(workflow, 75)
    peak, samples = await race_against_a_limit(database_url, workflows, 3, 300)
    assert peak == 3 and samples > 50


async def test_the_direct_start_respects_the_limit_and_says_why() -> None:
    workflow = await make_workflow(await make_owner(), max_concurrency=1)
    await enqueue(workflow, 2)
    ids = [row["id"] for row in await DB.fetch("SELECT id FROM workflow_runs ORDER BY id")]
    async with DB.transaction():
        await runs.transition_run(ids[0], "start")
    async with DB.transaction():
        assert await queue.waiting_reason(ids[1]) == "workflow_concurrency"
    with pytest.raises(ConcurrencyLimitError) as refused:
        async with DB.transaction():
            await runs.transition_run(ids[1], "start")
    assert refused.value.details["waiting_reason"] == "workflow_concurrency"
    assert await claim("w", limit=5) == []  # the claim is held back too
    await finish(ids[0])
    async with DB.transaction():
        assert await queue.waiting_reason(ids[1]) == "queued"
    assert [run["id"] for run in await claim("w", limit=5)] == [ids[1]]
    with pytest.raises(InvalidTransitionError):
        async with DB.transaction():
            await runs.transition_run(ids[1], "start")


async def test_racing_direct_starts_and_claims_never_exceed_a_limit(
    wide_pool: None, database_url: str
) -> None:
    limit = await make_limit("db-writers", 2)
    workflow = await make_workflow(await make_owner(), limit_id=limit)
    await enqueue(workflow, 60)
    ids = [row["id"] for row in await DB.fetch("SELECT id FROM workflow_runs")]

    async def start(run_id: uuid.UUID) -> bool:
        try:
            async with DB.transaction():
                await runs.transition_run(run_id, "start")
        except (ConcurrencyLimitError, InvalidTransitionError):
            return False
        return True

    started = await asyncio.gather(
        *(start(run_id) for run_id in ids[:30]), *(claim(f"c{n}", 2) for n in range(20))
    )
    connection = await asyncpg.connect(database_url)
    try:
        assert await running_count(connection, [workflow]) == 2
    finally:
        await connection.close()
    assert sum(1 for s in started[:30] if s) + sum(len(c) for c in started[30:]) == 2


async def test_a_busy_workflow_does_not_starve_a_small_one() -> None:
    owner = await make_owner()
    busy = await make_workflow(owner)
    small = await make_workflow(owner)
    await enqueue(busy, 2000)
    await enqueue(small, 10)
    first = await claim("w", limit=10)
    assert Counter(run["workflow_id"] for run in first) == {busy: 5, small: 5}
    second = await claim("w", limit=10)
    assert Counter(run["workflow_id"] for run in second) == {busy: 5, small: 5}


# -- leases -------------------------------------------------------------------------------


def start_worker(database_url: str, limit: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.queue_worker", str(limit)],
        cwd=support.REPO_ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_sigkilled_workers_runs_come_back_after_their_lease(database_url: str) -> None:
    workflow = await make_workflow(await make_owner())
    await enqueue(workflow, 5)
    lease = 2.0
    worker = start_worker(database_url, 3)
    try:
        assert worker.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(worker.stdout.readline), timeout=60)
        assert line.startswith("CLAIMED "), (line, worker.stderr.read() if worker.stderr else "")
        doomed = {uuid.UUID(part) for part in line.split()[1].split(",")}
        worker.send_signal(signal.SIGKILL)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()
    assert len(doomed) == 3
    rows = await DB.fetch(
        "SELECT id, status, claimed_by, heartbeat_at, clock_timestamp() - heartbeat_at AS age "
        "FROM workflow_runs WHERE id = ANY($1)",
        list(doomed),
    )
    assert {row["status"] for row in rows} == {"running"}
    # The two runs it did not claim are still there for others; the doomed ones are not.
    others = await claim("survivor", limit=5)
    assert len(others) == 2 and {run["id"] for run in others}.isdisjoint(doomed)
    for run in others:
        await finish(run["id"])
    young = max(row["age"] for row in rows).total_seconds() < lease
    report = await reap_stuck_runs(lease, max_claims=3)
    if young:  # within the lease: nothing comes back early
        assert report.requeued == [] and report.runs == []

    async def came_back() -> bool:
        report = await reap_stuck_runs(lease, max_claims=3)
        return bool(report.requeued) or await queued() == 3

    await rs.wait_for(came_back, within=30, interval=0.1)
    again = await claim("survivor", limit=5)
    assert {run["id"] for run in again} == doomed
    assert {run["claims"] for run in again} == {2}
    events = await DB.fetch(
        "SELECT count(*) AS n FROM outbox WHERE event_type = 'run.retry_scheduled' "
        "AND aggregate_id = ANY($1)",
        list(doomed),
    )
    assert events[0]["n"] == 3


async def test_a_lapsed_lease_fails_the_run_once_its_claims_are_used_up() -> None:
    workflow = await make_workflow(await make_owner())
    await enqueue(workflow, 1)
    for expected_claims in (1, 2):
        [run] = await claim("w")
        assert run["claims"] == expected_claims
        await DB.fetch("UPDATE workflow_runs SET heartbeat_at = now() - interval '1 hour'")
        report = await reap_stuck_runs(60, max_claims=2)
        if expected_claims == 1:
            assert report.requeued == [run["id"]] and report.runs == []
        else:
            assert report.requeued == [] and report.runs == [run["id"]]
    [row] = await DB.fetch("SELECT status, error FROM workflow_runs")
    assert row["status"] == "failed" and "Reaped" in row["error"]


async def test_a_lapsed_lease_mid_attempt_follows_the_steps_retry_policy() -> None:
    owner = await make_owner()
    retried = await make_workflow(owner, retry_policy={"max_attempts": 2})
    once = await make_workflow(owner)  # {}: one attempt
    await enqueue(retried, 1)
    await enqueue(once, 1)
    for run in await claim("w", limit=2):
        async with DB.transaction():
            await runs.append_step_log(run["id"], step_position=0)
    await DB.fetch("UPDATE workflow_runs SET heartbeat_at = now() - interval '1 hour'")
    report = await reap_stuck_runs(60, max_claims=5)
    statuses = {
        row["workflow_id"]: row["status"]
        for row in await DB.fetch("SELECT workflow_id, status FROM workflow_runs")
    }
    assert statuses == {retried: "awaiting_retry", once: "failed"}
    assert len(report.requeued) == 1 and len(report.runs) == 1


# -- retries ------------------------------------------------------------------------------


async def claim_when_due() -> list[Any]:
    """Poll the claim until it hands something out."""
    claimed: list[Any] = []

    async def handed_out() -> bool:
        claimed.extend(await claim("w"))
        return bool(claimed)

    await rs.wait_for(handed_out, within=10, interval=0.01)
    return claimed


async def test_retries_fire_at_their_due_time_never_early_with_the_policys_backoff() -> None:
    policy = {
        "max_attempts": 3,
        "backoff": {"initial_seconds": 0.4, "multiplier": 2, "max_seconds": 10},
        "jitter": 0.25,
    }
    workflow = await make_workflow(await make_owner(), retry_policy=policy)
    await enqueue(workflow, 1)
    [run] = await claim("w")
    for attempt, backoff in ((1, 0.4), (2, 0.8)):
        async with DB.transaction():
            log = await runs.append_step_log(
                run["id"], step_position=0, status=RunStatus.FAILED, error="boom"
            )
        assert log["attempt"] == attempt
        [row] = await DB.fetch(
            "SELECT status, next_attempt_at, updated_at FROM workflow_runs WHERE id = $1",
            run["id"],
        )
        assert row["status"] == "awaiting_retry"
        delay = (row["next_attempt_at"] - row["updated_at"]).total_seconds()
        assert backoff <= delay <= backoff * 1.25 + 0.05
        # Poll the claim until it hands the run back: never before next_attempt_at.
        claimed = await claim_when_due()
        [now] = await DB.fetch("SELECT clock_timestamp() AS t")
        assert now["t"] >= row["next_attempt_at"]
        assert claimed[0]["id"] == run["id"] and claimed[0]["next_attempt_at"] is None
        run = claimed[0]
    # The third attempt is the last: a failure leaves the run running, for its executor.
    async with DB.transaction():
        await runs.append_step_log(
            run["id"], step_position=0, status=RunStatus.FAILED, error="boom"
        )
    [row] = await DB.fetch("SELECT status FROM workflow_runs WHERE id = $1", run["id"])
    assert row["status"] == "running"


async def test_a_run_started_by_id_keeps_its_executors_own_retry_loop() -> None:
    """Only the queue's runs (claimed) are requeued: an executor that starts a run
    by id and retries inline (as the seed does) sees it stay running."""
    workflow = await make_workflow(await make_owner(), retry_policy={"max_attempts": 3})
    await enqueue(workflow, 1)
    [row] = await DB.fetch("SELECT id FROM workflow_runs")
    async with DB.transaction():
        await runs.transition_run(row["id"], "start")
        await runs.append_step_log(
            row["id"], step_position=0, status=RunStatus.FAILED, error="once"
        )
        second = await runs.append_step_log(row["id"], step_position=0)
    assert second["attempt"] == 2
    [row] = await DB.fetch("SELECT status FROM workflow_runs")
    assert row["status"] == "running"


async def test_a_finished_failed_attempt_schedules_a_retry_too() -> None:
    workflow = await make_workflow(await make_owner(), retry_policy={"max_attempts": 2})
    await enqueue(workflow, 1)
    [run] = await claim("w")
    async with DB.transaction():
        log = await runs.append_step_log(run["id"], step_position=0)
        await runs.finish_step_log(run["id"], log["id"], status=RunStatus.FAILED, error="x")
    [row] = await DB.fetch("SELECT status, error FROM workflow_runs")
    assert row["status"] == "awaiting_retry" and "Attempt 1 failed" in row["error"]


async def test_the_engine_never_jit_compiles_a_claim() -> None:
    """With a million runs queued the claim's estimated cost crosses jit_above_cost,
    and PostgreSQL spent ~54 ms compiling it for ~5 ms of work (claims/s at 1M
    queued fell to 0.55x of 10k). FlowForge's connections run with jit off."""
    from flowforge.db.engine import asyncpg_config, session_settings

    assert session_settings(DB.settings)["jit"] == "off"
    async with DB.transaction():
        rows = await DB.fetch("SELECT current_setting('jit') AS jit")
    assert rows[0]["jit"] == "off"
    # Directly connected it is a startup parameter (behind a pooler: tests/test_pgbouncer.py).
    config = asyncpg_config(DB.settings)
    if not DB.behind_pooler:
        assert config["server_settings"]["jit"] == "off"
