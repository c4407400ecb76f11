"""The API-key statements: authentication and revocation (flowforge.domain.api_keys).

Key management is on the query builder; these two stay raw: authentication
writes its throttled ``last_used_at`` in the same round trip as the lookup,
and revocation walks the keys a key granted (a recursive CTE) and writes an
``api_key.revoked`` event per key in one statement.
"""

from __future__ import annotations

from typing import Final, LiteralString

from flowforge.core import events
from flowforge.db.sql import outbox
from flowforge.db.sql.history import set_actor_sql

# A key's last_used_at is written at most once per this many seconds (flowforge.domain.api_keys).
LAST_USED_GRANULARITY_SECONDS: Final = 60


# The request's actor for run_history ("api_key:<id>", transaction-local),
# set by the lookup itself: no round trip of its own. Only for the key whose
# hash matches; a request refused here writes nothing anyway. Where a request's
# actor is set: if authentication stops reaching the database (a cache), this
# expression moves to the request's first statement.
_KEY_ACTOR: Final[LiteralString] = "'api_key:' || k.id"
_ACTOR: Final[LiteralString] = f"CASE WHEN k.key_hash = $2 THEN {set_actor_sql(_KEY_ACTOR)} END"


# One round trip: the key and its user by prefix, plus the throttled, never
# blocking last_used_at write (only for a key that is valid right now), plus
# the request's run_history actor (_ACTOR).
AUTHENTICATE: Final[LiteralString] = f"""
WITH touched AS (
    UPDATE api_keys SET last_used_at = now()
    WHERE id = (
        SELECT id FROM api_keys
        WHERE prefix = $1 AND key_hash = $2 AND revoked_at IS NULL
          AND (expires_at IS NULL OR expires_at > now())
          AND (last_used_at IS NULL
               OR last_used_at < now() - make_interval(secs => {LAST_USED_GRANULARITY_SECONDS}))
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id
)
SELECT k.id, k.user_id, k.key_hash, k.scopes, k.expires_at, k.revoked_at IS NOT NULL AS revoked,
    k.expires_at IS NOT NULL AND k.expires_at <= now() AS expired,
    u.role, u.is_active,
    {_ACTOR} AS actor
FROM api_keys k JOIN users u ON u.id = k.user_id
WHERE k.prefix = $1
"""  # noqa: S608 - a constant number, no client text


# Revoke a key and every key it granted, transitively, with one api_key.revoked
# event per key revoked now. Already-revoked keys keep their revoked_at (and are
# still walked through: a key granted by one of them is revoked). Nothing is
# revoked when the key making the request ($2) is in the tree: revoking it by
# way of one of its granters would lock the client out (revokes_caller). Keys
# are locked in id order, so two revocations of overlapping trees cannot
# deadlock; one that waited re-checks revoked_at and skips a key revoked
# meanwhile. UNION (not UNION ALL) ends the walk even on a cycle made by hand.
# "= ANY (ARRAY(...))" rather than "IN (SELECT ...)": probes of the primary key
# (tests/test_explain.py; IN was planned as a hash join over a scan of every key).
_REVOKED_EVENT: Final[LiteralString] = outbox.insert_from(
    "revoked r",
    aggregate_type=events.API_KEY,
    aggregate_id="r.id",
    event_type="'api_key.revoked'",
    payload=outbox.api_key_revoked_payload_sql("r", "$1"),
)

REVOKE_GRANTED: Final[LiteralString] = f"""
WITH RECURSIVE tree AS (
    SELECT id FROM api_keys WHERE id = $1
    UNION
    SELECT k.id FROM api_keys k JOIN tree t ON k.granted_by_key_id = t.id
), locked AS (
    SELECT id FROM api_keys
    WHERE id = ANY (ARRAY(SELECT id FROM tree)) AND revoked_at IS NULL
      AND NOT EXISTS (SELECT FROM tree WHERE id = $2)
    ORDER BY id
    FOR NO KEY UPDATE
), revoked AS (
    UPDATE api_keys k SET revoked_at = now()
    FROM locked
    WHERE k.id = locked.id
    RETURNING k.id, k.user_id, k.prefix
), events AS (
    {_REVOKED_EVENT}
)
SELECT EXISTS (SELECT FROM tree WHERE id = $2) AS revokes_caller,
    (SELECT count(*) FROM revoked) AS revoked
"""  # noqa: S608 - literal fragments; values are bind parameters
