"""Prometheus metrics (prometheus-client), one registry per process.

Who exposes what:

* the API: ``GET /metrics`` (flowforge/api/observability.py) — HTTP requests,
  its connection pool, outbox lag and dead letters (read at scrape time), and
  any reaper/prune work done in-process;
* each relay: ``http://<host>:RELAY_METRICS_PORT/metrics`` when that setting is
  set (``prometheus_client.start_http_server``) — relay counters, its pool,
  and the reaper and prune passes it runs;
* ``piccolo flowforge reap`` / ``prune`` (cron): short-lived, they print what
  they did instead; count them from the relay when run there.

Counters are per process (a restart resets them; Prometheus' ``rate()`` and
``increase()`` handle that). Several uvicorn workers are several targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

NAMESPACE = "flowforge"

# No *_created series: they double the output and Prometheus does not need them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# -- HTTP (the API) ------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    namespace=NAMESPACE,
)
HTTP_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from receiving a request to the end of its response, by route template and status.",
    ["method", "route", "status"],
    namespace=NAMESPACE,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# -- Outbox relay ----------------------------------------------------------------------

RELAY_BATCHES = Counter(
    "relay_batches", "Claim-publish-mark transactions committed.", namespace=NAMESPACE
)
RELAY_PUBLISHED = Counter(
    "relay_events_published", "Outbox events published to the broker.", namespace=NAMESPACE
)
RELAY_FAILED = Counter(
    "relay_events_failed",
    "Publish attempts the broker rejected (each charged to its event).",
    namespace=NAMESPACE,
)
RELAY_DEAD_LETTERED = Counter(
    "relay_events_dead_lettered",
    "Events dead-lettered after OUTBOX_MAX_ATTEMPTS.",
    namespace=NAMESPACE,
)
RELAY_ERRORS = Counter(
    "relay_errors",
    "Batches abandoned (rolled back) and retried, by cause: broker, database, unexpected.",
    ["cause"],
    namespace=NAMESPACE,
)

# -- Housekeeping ----------------------------------------------------------------------

REAPED_RUNS = Counter(
    "reaper_runs_failed",
    "Running runs failed by the reaper because their lease expired.",
    namespace=NAMESPACE,
)
PRUNED_ROWS = Counter(
    "pruned_rows",
    "Rows deleted by retention pruning, by kind: outbox_events, runs, step_logs, history "
    "(history only by partition drop: row by row it goes with its run).",
    ["kind"],
    namespace=NAMESPACE,
)
for _kind in ("outbox_events", "runs", "step_logs", "history"):
    PRUNED_ROWS.labels(kind=_kind)
for _cause in ("broker", "database", "unexpected"):
    RELAY_ERRORS.labels(cause=_cause)


# -- The connection pool (read at scrape time) ----------------------------------------


class PoolCollector(Collector):
    """Size, in-use and waiting of the engine's pool, read when scraped.

    asyncpg exposes the pool's size and idle count; ``waiting`` (acquirers
    blocked on a full pool) is counted by the engine's ``acquire``.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self.engine.pool
        size = in_use = max_size = 0
        if pool is not None:
            size = pool.get_size()
            in_use = size - pool.get_idle_size()
            max_size = pool.get_max_size()
        yield GaugeMetricFamily(
            f"{NAMESPACE}_db_pool_size", "Open connections in the pool.", value=size
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_db_pool_max_size", "Most connections the pool opens.", value=max_size
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_db_pool_in_use", "Connections lent out right now.", value=in_use
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_db_pool_waiting",
            "Acquirers waiting for a connection right now.",
            value=self.engine.acquire_waiting,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_db_pool_up",
            "1 when the pool is started (0 while the database is unreachable).",
            value=1 if pool is not None else 0,
        )


_registered: set[int] = set()


def register_pool(engine: Any, registry: CollectorRegistry = REGISTRY) -> None:
    """Export `engine`'s pool gauges (once per process)."""
    if id(registry) in _registered:
        return
    registry.register(PoolCollector(engine))
    _registered.add(id(registry))
