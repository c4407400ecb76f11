"""The outbox relay against real PostgreSQL and real Redis (in-process relays).

Process-level behaviour (SIGKILL mid-batch, SIGTERM) is in test_relay_process.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections import defaultdict
from typing import Any

import asyncpg
import pytest

from flowforge.core.settings import PublisherKind
from flowforge.db.engine import DB
from flowforge.db.sql import relay as relay_sql
from flowforge.outbox.status import outbox_health, outbox_status, requeue_dead_letters
from flowforge.relay import store
from flowforge.relay.publishers import (
    BrokerUnavailableError,
    LogPublisher,
    RedisStreamPublisher,
    create_publisher,
)
from flowforge.relay.relay import Relay
from tests import relay_support as rs
from tests import support

pytestmark = pytest.mark.usefixtures("db")


def redis_publisher(prefix: str) -> RedisStreamPublisher:
    return RedisStreamPublisher(rs.REDIS_URL, prefix)


async def test_every_event_reaches_its_stream_with_its_id(redis_prefix: str) -> None:
    owner = uuid.uuid4()
    workflow_event = await rs.insert_event(owner, aggregate_type="workflow")
    await rs.insert_events(aggregates=3, per_aggregate=2)  # workflow_run
    publisher = redis_publisher(redis_prefix)
    relay = Relay(rs.relay_settings(redis_prefix), publisher)
    try:
        result = await relay.run_once()
    finally:
        await publisher.close()
    assert (result.claimed, result.published, result.failed) == (7, 7, 0)

    client = await rs.redis_client()
    try:
        workflow_stream = await rs.stream_entries(client, f"{redis_prefix}:workflow")
        run_stream = await rs.stream_entries(client, f"{redis_prefix}:workflow_run")
    finally:
        await client.aclose()
    assert len(run_stream) == 6
    [message] = workflow_stream
    row = (await DB.fetch("SELECT * FROM outbox WHERE id = $1", workflow_event["id"]))[0]
    assert message == {
        "id": str(row["id"]),
        "type": "test.event",
        "aggregate_type": "workflow",
        "aggregate_id": str(owner),
        "occurred_at": row["created_at"].isoformat(),
        "payload": '{"n": 1}',
    }
    assert row["published_at"] is not None and row["attempts"] == 1
    assert await rs.unpublished() == 0
    # Nothing left: the next pass claims nothing.
    assert (await relay.run_once()).claimed == 0


async def test_three_relays_publish_10k_events_each_marked_once_in_aggregate_order(
    redis_prefix: str,
) -> None:
    await rs.insert_events(aggregates=200, per_aggregate=50)  # 10,000 events
    publishers = [redis_publisher(redis_prefix) for _ in range(3)]
    relays = [
        # 3 x 50 heads < 200 aggregates: each relay finds work on its first pass.
        Relay(rs.relay_settings(redis_prefix, relay_batch_size=50), publisher)
        for publisher in publishers
    ]
    try:
        async with rs.running(*relays):
            await rs.wait_for(lambda: _all_published(), within=120, interval=0.1)
    finally:
        for publisher in publishers:
            await publisher.close()

    # Every relay took part, and each event was marked exactly once.
    assert all(relay.stats.published > 0 for relay in relays)
    assert sum(relay.stats.published for relay in relays) == 10_000
    assert await rs.count("SELECT count(*) FROM outbox WHERE attempts <> 1") == 0

    client = await rs.redis_client()
    try:
        entries = await rs.stream_entries(client, f"{redis_prefix}:workflow_run")
    finally:
        await client.aclose()
    seq_by_id = {str(row["id"]): row["seq"] for row in await DB.fetch("SELECT id, seq FROM outbox")}
    assert {entry["id"] for entry in entries} == set(seq_by_id)  # all delivered (at least once)
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for entry in entries:
        if entry["id"] not in seen:  # what a de-duplicating consumer sees
            seen.add(entry["id"])
            first_seen[entry["aggregate_id"]].append(seq_by_id[entry["id"]])
    assert len(first_seen) == 200
    for seqs in first_seen.values():
        assert seqs == sorted(seqs)
        assert len(seqs) == 50


async def _all_published() -> bool:
    return await rs.unpublished() == 0


async def test_a_later_event_waits_while_its_aggregates_head_is_claimed(
    redis_prefix: str, database_url: str
) -> None:
    """Only the oldest unpublished event of an aggregate can be claimed."""
    blocked, free = uuid.uuid4(), uuid.uuid4()
    head = await rs.insert_event(blocked, 1)
    second = await rs.insert_event(blocked, 2)
    other = await rs.insert_event(free, 1)
    publisher = redis_publisher(redis_prefix)
    relay = Relay(rs.relay_settings(redis_prefix), publisher)
    # Another relay has claimed the head (holds its row lock).
    holder = await asyncpg.connect(database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM outbox WHERE id = $1 FOR UPDATE", head["id"])
            result = await relay.run_once()
            assert result.published == 1
            published = await DB.fetch("SELECT id FROM outbox WHERE published_at IS NOT NULL")
            assert [row["id"] for row in published] == [other["id"]]
        # Released (as if that relay died): both go, in order.
        result = await relay.run_once()
    finally:
        await holder.close()
        await publisher.close()
    assert result.published == 2
    client = await rs.redis_client()
    try:
        entries = await rs.stream_entries(client, f"{redis_prefix}:workflow")
    finally:
        await client.aclose()
    assert [entry["id"] for entry in entries] == [
        str(other["id"]),
        str(head["id"]),
        str(second["id"]),
    ]


async def test_an_event_committed_late_with_an_older_seq_is_still_published(
    redis_prefix: str, database_url: str
) -> None:
    publisher = redis_publisher(redis_prefix)
    relay = Relay(rs.relay_settings(redis_prefix), publisher)
    slow = await asyncpg.connect(database_url)
    try:
        late_transaction = slow.transaction()
        await late_transaction.start()
        late = await slow.fetchrow(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type) "
            "VALUES ('workflow', gen_random_uuid(), 'late') RETURNING id, seq, created_at"
        )
        assert late is not None
        early = await rs.insert_event(uuid.uuid4())
        assert early["seq"] > late["seq"]
        assert (await relay.run_once()).published == 1  # only the committed one
        await late_transaction.commit()
        result = await relay.run_once()
    finally:
        await slow.close()
        await publisher.close()
    assert result.published == 1
    row = (await DB.fetch("SELECT * FROM outbox WHERE id = $1", late["id"]))[0]
    assert row["published_at"] is not None
    assert (
        row["created_at"]
        < (await DB.fetch("SELECT created_at FROM outbox WHERE id = $1", early["id"]))[0][0]
    )


async def test_failing_aggregate_backs_off_then_is_dead_lettered_and_holds_only_itself(
    redis_prefix: str,
) -> None:
    bad, good = uuid.uuid4(), uuid.uuid4()
    bad_head = await rs.insert_event(bad, 1)
    bad_next = await rs.insert_event(bad, 2)
    await rs.insert_event(good, 1)
    publisher = rs.ScriptedPublisher(redis_publisher(redis_prefix), failing={bad})
    settings = rs.relay_settings(
        redis_prefix, outbox_max_attempts=3, outbox_retry_base_delay=0.3, outbox_retry_max_delay=5
    )
    relay = Relay(settings, publisher)
    try:
        first = await relay.run_once()
        assert (first.published, first.failed, first.not_attempted) == (1, 1, 1)
        row = await _row(bad_head["id"])
        assert row["attempts"] == 1 and row["last_error"] == "broker said no"
        assert row["dead_lettered_at"] is None
        backoff = (row["next_attempt_at"] - row["updated_at"]).total_seconds()
        assert 0.29 < backoff < 0.6

        # Not retried before its back-off is over; good events keep flowing.
        await rs.insert_event(good, 2)
        assert (await relay.run_once()).published == 1
        assert (await _row(bad_head["id"]))["attempts"] == 1

        # Run the loop until the bad head is dead-lettered.
        async with rs.running(relay):
            await rs.wait_for(lambda: _dead_lettered(bad_head["id"]), within=10, interval=0.02)
    finally:
        await publisher.close()

    attempts = [at for at, events in publisher.calls if events[0].aggregate_id == bad]
    assert len(attempts) == 3
    # Exponential: 0.3 s, then 0.6 s between attempts (never earlier).
    assert attempts[1] - attempts[0] >= 0.29
    assert attempts[2] - attempts[1] >= 0.59
    head = await _row(bad_head["id"])
    assert head["attempts"] == 3 and head["published_at"] is None
    # The later event of the same aggregate is held, untouched, not dead-lettered.
    held = await _row(bad_next["id"])
    assert (held["attempts"], held["dead_lettered_at"], held["published_at"]) == (0, None, None)
    # Other aggregates were not affected.
    assert (
        await rs.count(
            "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND published_at IS NULL", good
        )
        == 0
    )

    async with DB.transaction():
        health = await outbox_health()
        status = await outbox_status()
    assert health["dead_lettered"] == 1 and health["lag_seconds"] > 0  # the held event
    assert (status["unpublished"], status["held_behind_dead_letters"]) == (1, 1)
    assert status["dead_letters"][0]["id"] == str(bad_head["id"])
    assert status["dead_letters"][0]["last_error"] == "broker said no"

    # Requeued once the broker accepts them: both go, in order.
    async with DB.transaction():
        assert await requeue_dead_letters([bad_head["id"]]) == 1
    publisher.failing.clear()
    relay = Relay(settings, publisher)
    try:
        result = await relay.run_once()
    finally:
        await publisher.close()
    assert result.published == 2
    assert await rs.unpublished() == 0
    async with DB.transaction():
        assert (await outbox_health()) == {"lag_seconds": 0.0, "dead_lettered": 0}


async def _row(event_id: uuid.UUID) -> asyncpg.Record:
    return (await DB.fetch("SELECT * FROM outbox WHERE id = $1", event_id))[0]


async def _dead_lettered(event_id: uuid.UUID) -> bool:
    return (await _row(event_id))["dead_lettered_at"] is not None


async def test_the_status_lists_dead_letters_oldest_first_with_the_start_of_their_error() -> None:
    for age, error in ((5, "x" * 1000), (60, "older")):
        await DB.fetch(
            "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, attempts, "
            "dead_lettered_at, last_error) "
            "VALUES ('test', gen_random_uuid(), 'test.dead', 3, "
            "now() - make_interval(secs => $1), $2)",
            float(age),
            error,
        )
    async with DB.transaction():
        status = await outbox_status(dead_letter_limit=5)
        (only,) = (await outbox_status(dead_letter_limit=1))["dead_letters"]
    assert [item["last_error"] for item in status["dead_letters"]] == ["older", "x" * 300]
    assert only["last_error"] == "older" and only["attempts"] == 3
    assert status["dead_lettered"] == 2


async def test_a_redis_error_on_one_stream_fails_only_that_aggregate_type(
    redis_prefix: str,
) -> None:
    """A real per-stream failure (WRONGTYPE) goes through the Lua script's pcall path."""
    client = await rs.redis_client()
    await client.set(f"{redis_prefix}:user", "not a stream")
    user_a, user_b, workflow = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first_a = await rs.insert_event(user_a, 1, aggregate_type="user")
    await rs.insert_event(user_a, 2, aggregate_type="user")
    await rs.insert_event(user_b, 1, aggregate_type="user")
    await rs.insert_event(workflow, 1)
    publisher = redis_publisher(redis_prefix)
    relay = Relay(rs.relay_settings(redis_prefix), publisher)
    try:
        result = await relay.run_once()
        entries = await rs.stream_entries(client, f"{redis_prefix}:workflow")
    finally:
        await publisher.close()
        await client.aclose()
    assert (result.claimed, result.published, result.failed, result.not_attempted) == (4, 1, 2, 1)
    assert len(entries) == 1
    row = await _row(first_a["id"])
    assert row["attempts"] == 1 and "WRONGTYPE" in row["last_error"]


async def test_an_unreachable_broker_charges_no_attempt() -> None:
    await rs.insert_event(uuid.uuid4())
    publisher = RedisStreamPublisher(
        "redis://127.0.0.1:1/0", "fftest-unreachable", connect_timeout=1
    )
    relay = Relay(rs.relay_settings(), publisher)
    try:
        with pytest.raises(BrokerUnavailableError):
            await relay.run_once()
        # The loop keeps going (and backs off) instead of dying.
        async with rs.running(relay):
            await rs.wait_for(lambda: _broker_errors(relay, 2), within=20)
    finally:
        await publisher.close()
    row = (await DB.fetch("SELECT attempts, last_error, published_at FROM outbox"))[0]
    assert (row["attempts"], row["last_error"], row["published_at"]) == (0, None, None)


async def _broker_errors(relay: Relay, at_least: int) -> bool:
    return relay.stats.broker_errors >= at_least


async def test_notify_wakes_an_idle_relay_long_before_its_next_poll(redis_prefix: str) -> None:
    publisher = redis_publisher(redis_prefix)
    settings = rs.relay_settings(
        redis_prefix, relay_listen=True, relay_poll_min_interval=20, relay_poll_max_interval=20
    )
    relay = Relay(settings, publisher)
    try:
        async with rs.running(relay):
            assert relay.listener is not None
            await asyncio.wait_for(relay.listener.connected.wait(), 10)
            # The relay's first pass found nothing: it waits for up to 20 s.
            await asyncio.wait_for(relay.idle.wait(), 10)
            await rs.insert_event(uuid.uuid4())
            await rs.wait_for(_all_published, within=10)
            # Published by a notification: the idle wait ended early, no poll ran.
            assert (relay.stats.woken, relay.stats.polls) == (1, 0)

            # After the listener's backend dies it reconnects, and wakes the relay again.
            old_pid = relay.listener.connection.get_server_pid()
            await DB.fetch("SELECT pg_terminate_backend($1)", old_pid)
            await rs.wait_for(lambda: _reconnected(relay), within=10)
            await asyncio.wait_for(relay.idle.wait(), 10)
            await rs.insert_event(uuid.uuid4())
            await rs.wait_for(_all_published, within=10)
            assert relay.stats.woken >= 2 and relay.stats.polls == 0
            assert relay.listener.connection.get_server_pid() != old_pid
    finally:
        await publisher.close()


async def _polling_at(relay: Relay, interval: float) -> bool:
    return relay.idle.is_set() and relay.idle_delay >= interval


async def _reconnected(relay: Relay) -> bool:
    listener = relay.listener
    assert listener is not None
    return listener.reconnects >= 1 and listener.connected.is_set()


async def test_polling_alone_publishes_when_notifications_are_off(redis_prefix: str) -> None:
    publisher = redis_publisher(redis_prefix)
    settings = rs.relay_settings(
        redis_prefix, relay_listen=False, relay_poll_min_interval=0.1, relay_poll_max_interval=0.4
    )
    relay = Relay(settings, publisher)
    try:
        async with rs.running(relay):
            # Idle long enough to reach the longest poll interval.
            await rs.wait_for(lambda: _polling_at(relay, 0.4), within=10)
            await rs.insert_event(uuid.uuid4())
            polls = relay.stats.polls
            await rs.wait_for(_all_published, within=10)
            # Found by a poll: nothing woke the relay, and the poll in progress
            # at commit (or, had its probe just missed the commit, the next) found it.
            assert relay.stats.woken == 0
            assert relay.stats.polls - polls <= 2
    finally:
        await publisher.close()
    assert relay.listener is None


async def test_the_relay_carries_on_after_its_backend_is_killed_mid_batch(
    redis_prefix: str,
) -> None:
    """The Piccolo bug: a connection that dies inside a transaction must not stay current."""
    await rs.insert_events(aggregates=5, per_aggregate=4)
    publisher = rs.ScriptedPublisher(redis_publisher(redis_prefix))
    kills = 0

    async def kill_my_backend_once(_events: object) -> None:
        nonlocal kills
        if kills == 0:
            kills += 1
            pid = DB.require_transaction().connection.get_server_pid()
            killer = await asyncpg.connect(DB.config["dsn"])
            try:
                # pg_terminate_backend(pid, timeout) returns once the backend is gone.
                assert await killer.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
            finally:
                await killer.close()

    publisher.before = kill_my_backend_once
    relay = Relay(rs.relay_settings(redis_prefix, relay_batch_size=5), publisher)
    try:
        async with rs.running(relay):
            await rs.wait_for(_all_published, within=30)
    finally:
        await publisher.close()
    assert kills == 1
    assert relay.stats.database_errors >= 1
    assert await rs.count("SELECT count(*) FROM outbox WHERE attempts <> 1") == 0
    # The killed batch had been sent to Redis before its COMMIT failed: it went twice.
    client = await rs.redis_client()
    try:
        entries = await rs.stream_entries(client, f"{redis_prefix}:workflow_run")
    finally:
        await client.aclose()
    assert len({entry["id"] for entry in entries}) == 20
    assert len(entries) == 25


async def test_log_publisher_writes_one_json_line_per_event() -> None:
    event = await rs.insert_event(uuid.uuid4(), 7)
    out = io.StringIO()
    relay = Relay(rs.relay_settings(outbox_publisher=PublisherKind.LOG), LogPublisher(out))
    assert (await relay.run_once()).published == 1
    [line] = out.getvalue().splitlines()
    message = json.loads(line)
    assert message["id"] == str(event["id"])
    assert message["payload"] == {"n": 7}


def test_the_publisher_is_chosen_by_setting() -> None:
    assert isinstance(create_publisher(rs.relay_settings()), RedisStreamPublisher)
    log = rs.relay_settings(outbox_publisher=PublisherKind.LOG)
    assert isinstance(create_publisher(log), LogPublisher)


async def test_readyz_reports_lag_and_dead_letters_but_stays_ready(database_url: str) -> None:
    import httpx

    from flowforge.api.app import create_app

    await rs.insert_event(uuid.uuid4())
    await DB.fetch(
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, attempts, last_error, "
        "dead_lettered_at, created_at) VALUES ('workflow', gen_random_uuid(), 'x', 3, 'no', "
        "now(), now() - interval '1 hour')"
    )
    await DB.fetch(
        "UPDATE outbox SET created_at = now() - interval '90 seconds' WHERE dead_lettered_at IS NULL"
    )
    app = create_app()
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["postgres"] == "ok"
    assert body["outbox"]["dead_lettered"] == 1
    assert 89 < body["outbox"]["lag_seconds"] < 200
    assert set(body["outbox"]) == {"lag_seconds", "dead_lettered"}


async def test_stats_and_housekeeping_timers_run_inside_the_relay(redis_prefix: str) -> None:
    publisher = redis_publisher(redis_prefix)
    settings = rs.relay_settings(redis_prefix, relay_reap_interval=0.1, relay_prune_interval=0.1)
    relay = Relay(settings, publisher)
    calls: list[str] = []

    async def fake_reap() -> None:
        calls.append("reap")

    async def failing_prune() -> None:
        calls.append("prune")
        raise RuntimeError("housekeeping bug")

    relay._reap = fake_reap  # type: ignore[method-assign]
    relay._prune = failing_prune  # type: ignore[method-assign]
    try:
        async with rs.running(relay):
            await rs.wait_for(lambda: _called_twice(calls, "prune"), within=5)
            await relay._log_stats()
    finally:
        await publisher.close()
    assert calls.count("reap") >= 2 and calls.count("prune") >= 2  # an error does not stop it


async def _called_twice(calls: list[str], name: str) -> bool:
    return calls.count(name) >= 2


async def test_claiming_stays_index_driven_when_statistics_say_nothing_waits() -> None:
    """A burst of events right after statistics saw a fully published outbox.

    The planner then believes "published_at IS NULL" matches about one row.
    The NOT EXISTS form of the head test turned that into a full scan of the
    waiting events per candidate (6 s for one batch of 500 over 20k events);
    the claim must look each aggregate up by index whatever the estimates.
    """
    await rs.insert_events(aggregates=2000, per_aggregate=5)
    await DB.fetch("UPDATE outbox SET published_at = now(), attempts = 1")
    await DB.fetch("ANALYZE outbox")
    await DB.fetch("TRUNCATE outbox")
    await rs.insert_events(aggregates=2000, per_aggregate=5, start=10_000)

    def lookups_by_aggregate(tree: dict[str, object]) -> list[dict[str, object]]:
        found = []
        stack = [tree]
        while stack:
            node = stack.pop()
            # A partition's copy of the index counts (issue 11: outbox is partitioned).
            index = support.as_table(None, node.get("Index Name"))[1]  # type: ignore[arg-type]
            if index == "outbox_aggregate_unpublished_idx":
                found.append(node)
            stack.extend(node.get("Plans", []))  # type: ignore[arg-type]
        return found

    heads_plan = await _plan(relay_sql.CLAIM_HEADS, 500)
    heads = await DB.fetch(
        "SELECT aggregate_type, aggregate_id, seq FROM outbox ORDER BY seq LIMIT 100"
    )
    followers_plan = await _plan(
        relay_sql.CLAIM_FOLLOWERS,
        [row["aggregate_type"] for row in heads],
        [row["aggregate_id"] for row in heads],
        [row["seq"] for row in heads],
        400,
    )
    for tree in (heads_plan, followers_plan):
        lookups = lookups_by_aggregate(tree)
        assert lookups
        for node in lookups:
            assert "aggregate_id" in str(node.get("Index Cond", "")), node

    async with DB.transaction():
        events = await store.claim_batch(500)
    assert len(events) == 500
    # The work done, not the time taken: rows the claim reads from the outbox
    # (the anti-join read the whole backlog per candidate: ~500 x 10,000).
    async with DB.transaction() as transaction:
        document = await transaction.connection.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {relay_sql.CLAIM_HEADS}", 500
        )
    read = rows_read(json.loads(document)[0]["Plan"], "outbox")
    assert read <= 20 * 500, f"the claim read {read} outbox rows for 500 heads"


def rows_read(node: dict[str, Any], relation: str) -> float:
    """Rows a plan read from `relation` (returned or filtered out), over all loops."""
    own = 0.0
    if node.get("Relation Name") == relation:
        loops = node.get("Actual Loops", 1)
        own = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
    return own + sum(rows_read(child, relation) for child in node.get("Plans", []))


async def _plan(sql: str, *args: object) -> dict[str, object]:
    value = (await DB.fetch(f"EXPLAIN (FORMAT JSON) {sql}", *args))[0][0]
    document = json.loads(value) if isinstance(value, str) else value
    return document[0]["Plan"]  # type: ignore[no-any-return]


async def test_a_crashing_listener_is_restarted(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flowforge.relay.relay as relay_module

    monkeypatch.setattr(relay_module, "LISTENER_RESTART_SECONDS", 0.05)
    publisher = redis_publisher(redis_prefix)
    relay = Relay(rs.relay_settings(redis_prefix, relay_listen=True), publisher)
    listener = relay.listener
    assert listener is not None
    real_run = listener.run
    runs = 0

    async def crashes_once(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("a bug in the listener")
        await real_run(stop)

    listener.run = crashes_once  # type: ignore[method-assign]
    try:
        async with rs.running(relay):
            await asyncio.wait_for(listener.connected.wait(), 10)
    finally:
        await publisher.close()
    assert runs == 2
