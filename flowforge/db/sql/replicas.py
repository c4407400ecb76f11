"""Replica routing's probes: a standby's state, its replay position, the consistency token
(flowforge.db.replicas).
"""

from __future__ import annotations

from typing import Final, LiteralString

REPLICA_STATE: Final[LiteralString] = """
SELECT pg_is_in_recovery() AS standby,
       pg_last_wal_replay_lsn()::text AS replayed,
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
       END AS lag_seconds
"""

# Run inside a token read's replica transaction, before its queries: has the
# server that serves this transaction replayed past the token? Asked there, not
# taken from the monitor, because behind a transaction pooler (or a DSN listing
# several hosts) the monitor's connection may reach another server than the
# read's; inside the transaction it is the read's own server, and a standby's
# replay position only grows.
REPLAYED_PAST: Final[LiteralString] = (
    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false) AS replayed"
)

# The primary's current WAL insert position: the consistency token.
WAL_INSERT_POSITION: Final[LiteralString] = "SELECT pg_current_wal_insert_lsn()::text AS lsn"
