"""API keys: issue, list, revoke, and authenticate a bearer key.

A key looks like ``ff_<prefix>_<secret>``: the prefix (16 hex characters) is
not secret and is stored to find the key; the secret never is. What is stored
is the SHA-256 of the whole key, compared in constant time. SHA-256 without a
salt or stretching is right here (unlike for passwords): the secret is 256
random bits, so there is nothing to guess or precompute.

A key made through the API records the key that made it
(``granted_by_key_id``), and revoking a key revokes every key it granted,
transitively, in the same transaction: a leaked key's grants are leaked too,
and a key never outlives the key that granted it (nor expires after it).

``last_used_at`` is a coarse "recently used" signal, not an access log: it is
written at most once per ``LAST_USED_GRANULARITY_SECONDS`` (:mod:`flowforge.db.sql.api_keys`) per key, by the
authentication query itself, and skipped (``SKIP LOCKED``) when another request
is writing it, so authentication never waits on a lock and a busy key does not
turn every request into a write.

Authenticated keys are remembered per process for ``AUTH_CACHE_SECONDS``
(default 1 s; :class:`PrincipalCache`): a request whose key was authenticated
within that time skips the key lookup. The bound is what a revocation, a
deactivation or a role change waits for in the *other* workers (the worker that
makes the change forgets its cache at once); an expiry is exact (checked
against the remembered ``expires_at`` on every use). A remembered key does not
touch ``last_used_at``; the lookup after the entry lapses does, so the signal
stays within ``LAST_USED_GRANULARITY_SECONDS`` plus the cache bound.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast
from uuid import UUID

from piccolo.custom_types import Combinable
from piccolo.query.base import Query

from flowforge.core import events
from flowforge.core.errors import (
    ConflictError,
    ForbiddenError,
    InvalidFieldError,
    NotFoundError,
    UnauthorizedError,
)
from flowforge.core.settings import get_settings
from flowforge.db.builder import Param, compiled, limited, new_row, page_after
from flowforge.db.engine import DB
from flowforge.db.sql.api_keys import (
    AUTHENTICATE,
    REVOKE_GRANTED,
)
from flowforge.db.tables import ApiKey, Role, Scope, User
from flowforge.domain.pagination import DEFAULT_LIMIT, decode_cursor, page
from flowforge.domain.principal import SCOPES_BY_ROLE, Principal
from flowforge.domain.records import ApiKeyRecord
from flowforge.outbox import writer as outbox

KEY_PATTERN: Final = re.compile(r"ff_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
# Compared against when the prefix is unknown, so both failures take as long.
_DUMMY_HASH: Final = hashlib.sha256(b"flowforge-no-such-key").hexdigest()

KEY_COLUMNS: Final = (
    ApiKey.id,
    ApiKey.user_id,
    ApiKey.name,
    ApiKey.prefix,
    ApiKey.scopes,
    ApiKey.expires_at,
    ApiKey.revoked_at,
    ApiKey.last_used_at,
    ApiKey.granted_by_key_id,
    ApiKey.created_at,
    ApiKey.updated_at,
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> tuple[str, str]:
    """A new (prefix, full key). The full key is shown once and never stored."""
    prefix = secrets.token_hex(8)
    return prefix, f"ff_{prefix}_{secrets.token_urlsafe(32)}"


# -- authenticate -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PresentedKey:
    """A key of the right form (not yet known to be valid): its prefix and hash."""

    prefix: str
    key_hash: str


def parse_key(key: str) -> PresentedKey:
    """Check a key's form without the database; UnauthorizedError if it cannot be a key."""
    match = KEY_PATTERN.fullmatch(key)
    if match is None:
        raise UnauthorizedError("The API key is not valid.")
    return PresentedKey(prefix=match.group(1), key_hash=hash_key(key))


class PrincipalCache:
    """Authenticated keys of this process: SHA-256 of the key -> (principal, until).

    Only successful authentications are remembered, each for
    ``AUTH_CACHE_SECONDS`` (monotonic clock), and never past the key's own
    ``expires_at`` (wall clock, checked on every use). Bounded: past
    :attr:`MAX_ENTRIES` the oldest entry goes.
    """

    MAX_ENTRIES: Final = 10_000

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, key: PresentedKey) -> Principal | None:
        entry = self._entries.get(key.key_hash)
        if entry is None:
            return None
        principal, until = entry
        if time.monotonic() >= until or (
            principal.expires_at is not None
            and datetime.datetime.now(datetime.UTC) >= principal.expires_at
        ):
            self._entries.pop(key.key_hash, None)
            return None
        return principal

    def put(self, key: PresentedKey, principal: Principal) -> None:
        seconds = get_settings().auth_cache_seconds
        if seconds <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.pop(next(iter(self._entries)), None)
        self._entries[key.key_hash] = (principal, time.monotonic() + seconds)

    def clear(self) -> None:
        """Forget every key (a key was revoked, or a user changed, in this process)."""
        self._entries.clear()


PRINCIPALS = PrincipalCache()


async def authenticate(key: str | PresentedKey) -> Principal:
    """The principal a bearer key stands for; UnauthorizedError for any bad key.

    Always looks the key up (in the caller's transaction) and remembers a valid
    one in :data:`PRINCIPALS` for the request path (flowforge.api.deps)."""
    presented = parse_key(key) if isinstance(key, str) else key
    connection = DB.require_transaction().connection
    row = await connection.fetchrow(AUTHENTICATE, presented.prefix, presented.key_hash)
    stored = row["key_hash"] if row is not None else _DUMMY_HASH
    if not hmac.compare_digest(presented.key_hash, stored) or row is None:
        raise UnauthorizedError("The API key is not valid.")
    if row["revoked"]:
        raise UnauthorizedError("The API key has been revoked.")
    if row["expired"]:
        raise UnauthorizedError("The API key has expired.")
    if not row["is_active"]:
        raise UnauthorizedError("The API key's user is deactivated.")
    principal = Principal(
        user_id=row["user_id"],
        role=Role(row["role"]),
        scopes=frozenset(Scope(scope) for scope in row["scopes"]),
        key_id=row["id"],
        expires_at=row["expires_at"],
    )
    if isinstance(key, PresentedKey):
        PRINCIPALS.put(presented, principal)
    return principal


# -- manage -------------------------------------------------------------------------------


def _key(row: Mapping[str, Any]) -> ApiKeyRecord:
    key = cast(ApiKeyRecord, dict(row))
    key["scopes"] = list(key["scopes"])
    return key


async def create_api_key(
    user_id: UUID,
    *,
    name: str,
    scopes: Iterable[Scope],
    expires_at: datetime.datetime | None = None,
    granted_by: Principal | None = None,
) -> tuple[ApiKeyRecord, str]:
    """Issue a key for a user; returns (stored key, full key). The full key exists only here.

    The scopes must be within what the user's role allows and, when a key
    grants it (``granted_by``), within that key's own scopes; and such a key
    expires no later than the key that grants it: a key never mints a more
    powerful or longer-lived one. ``granted_by=None`` is the trusted CLI.
    """
    wanted = frozenset(Scope(scope) for scope in scopes)
    DB.require_transaction()
    user = await User.select(User.role, User.is_active).where(User.id == user_id).first().run()
    if user is None:
        raise NotFoundError("User not found.", user_id=str(user_id))
    if not user["is_active"]:
        raise ConflictError("The user is deactivated; activate them first.", user_id=str(user_id))
    role = Role(user["role"])
    beyond_role = wanted - SCOPES_BY_ROLE[role]
    if beyond_role:
        raise ForbiddenError(
            f"A {role.value}'s key cannot have the scope(s): "
            f"{', '.join(sorted(s.value for s in beyond_role))}.",
            role=role.value,
        )
    if granted_by is not None and not wanted <= granted_by.scopes:
        raise ForbiddenError(
            "A key cannot grant scopes it does not have itself.",
            key_scopes=sorted(s.value for s in granted_by.scopes),
        )
    limit = granted_by.expires_at if granted_by is not None else None
    if limit is not None and (expires_at is None or expires_at > limit):
        raise InvalidFieldError(
            "expires_at",
            f"must be no later than the expiry of the key making the request "
            f"({limit.isoformat()}): a key cannot outlive the key that created it",
        )
    if granted_by is not None:
        await _hold_granting_key(granted_by.key_id)
    prefix, full_key = generate_key()
    inserted = await (
        ApiKey.insert(
            new_row(
                ApiKey,
                user_id=user_id,
                name=name,
                prefix=prefix,
                key_hash=hash_key(full_key),
                scopes=sorted(scope.value for scope in wanted),
                expires_at=expires_at,
                granted_by_key_id=granted_by.key_id if granted_by is not None else None,
            )
        )
        .returning(*KEY_COLUMNS)
        .run()
    )
    key = _key(inserted[0])
    await outbox.record_event(
        events.API_KEY,
        key["id"],
        "api_key.created",
        {
            "api_key_id": key["id"],
            "user_id": user_id,
            "name": name,
            "prefix": prefix,
            "scopes": key["scopes"],
            "expires_at": expires_at,
            "granted_by_key_id": key["granted_by_key_id"],
        },
    )
    return key, full_key


async def _hold_granting_key(key_id: UUID) -> None:
    """Lock the key that grants a new one (FOR SHARE) and check it is still valid.

    A revocation locks each key it revokes (FOR NO KEY UPDATE), which
    conflicts: a key granted by a key being revoked either waits for the
    revocation and is refused here, or commits first and is found by the
    revocation's next pass (:func:`revoke_api_key`).
    """
    row = await (
        ApiKey.select(ApiKey.revoked_at).where(ApiKey.id == key_id).first().lock_rows("SHARE").run()
    )
    if row is None or row["revoked_at"] is not None:
        raise UnauthorizedError("The API key has been revoked.")


async def list_api_keys(
    *, user_id: UUID | None = None, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> tuple[list[ApiKeyRecord], str | None]:
    """A page of keys (one user's, or everyone's), newest first. Never the hash."""
    position = decode_cursor(cursor)

    def build() -> Query[Any, Any]:
        query = limited(
            ApiKey.select(*KEY_COLUMNS).order_by(ApiKey.created_at, ApiKey.id, ascending=False),
            Param("limit"),
        )
        if user_id is not None:
            query = query.where(ApiKey.user_id == Param("user_id"))
        if position is not None:
            query = query.where(page_after(ApiKey, (Param("created_at"), Param("id"))))
        return query

    key = ("api_keys.list", user_id is not None, position is not None)
    created_at, after_id = position if position is not None else (None, None)
    rows = await compiled(key, build).fetch(
        user_id=user_id, limit=limit + 1, created_at=created_at, id=after_id
    )
    return page([_key(row) for row in rows], limit)


async def revoke_api_key(
    key_id: UUID, *, user_id: UUID | None = None, acting_key_id: UUID | None = None
) -> ApiKeyRecord:
    """Revoke a key (one of `user_id`'s, or any) and every key it granted, transitively.

    The keys it granted are revoked whoever they belong to: they exist only by
    its authority. Revoking a revoked key changes nothing but what it granted
    that is still valid. ConflictError when `acting_key_id` (the key making
    the request) is the key or one it granted, directly or not.
    """
    connection = DB.require_transaction().connection
    visible: Combinable = ApiKey.id == key_id
    if user_id is not None:
        visible &= ApiKey.user_id == user_id
    if await ApiKey.select(ApiKey.id).where(visible).first().run() is None:
        raise NotFoundError("API key not found.", api_key_id=str(key_id))
    # Each pass is one statement with a snapshot of its own: a key granted by a
    # key of the tree and committed during a pass (its grant held that key,
    # which the pass waited for) is found by the next one. Ends with a pass
    # that revokes nothing.
    PRINCIPALS.clear()  # this worker at once; the others within AUTH_CACHE_SECONDS
    while True:
        row = await connection.fetchrow(REVOKE_GRANTED, key_id, acting_key_id)
        if row["revokes_caller"]:
            raise ConflictError(
                "A key cannot revoke itself, nor a key that granted it (that would revoke "
                "it too): revoke it with another key.",
                api_key_id=str(key_id),
            )
        if not row["revoked"]:
            break
    revoked = await ApiKey.select(*KEY_COLUMNS).where(ApiKey.id == key_id).first().run()
    if revoked is None:  # deleted with its user since it was found
        raise NotFoundError("API key not found.", api_key_id=str(key_id))
    return _key(revoked)
