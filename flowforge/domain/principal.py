"""Who is calling, and what they may do: roles and API-key scopes.

A request is allowed when *both* its key's scopes and its user's role allow it:

* scopes: ``read`` for reads, ``write`` for changes, ``admin`` for managing users
  and other users' keys, ``worker`` for claiming runs from the queue and driving
  them (start, heartbeat, step attempts, complete, fail; issue 18). Scopes are independent (``write`` does not imply ``read``).
* roles: ``viewer`` is read-only whatever its key says; ``developer`` reads and
  changes its own workflows and their runs; ``admin`` sees and changes everything.

Objects the caller may not see (another user's workflow or run) are reported as
not found, so their existence does not leak; missing rights are forbidden (403).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from uuid import UUID

from flowforge.core.errors import ForbiddenError
from flowforge.db.tables import Role, Scope

# The widest scopes each role may hold; a key never grants more than its role.
SCOPES_BY_ROLE: dict[Role, frozenset[Scope]] = {
    Role.ADMIN: frozenset({Scope.READ, Scope.WRITE, Scope.ADMIN, Scope.WORKER}),
    Role.DEVELOPER: frozenset({Scope.READ, Scope.WRITE, Scope.WORKER}),
    Role.VIEWER: frozenset({Scope.READ}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: a user acting through one API key."""

    user_id: UUID
    role: Role
    scopes: frozenset[Scope]
    key_id: UUID
    # When the key stops working (None: never); keys it issues expire no later.
    expires_at: datetime.datetime | None = None

    @property
    def actor(self) -> str:
        """Who acts, for the run history (``flowforge.actor``): ``api_key:<key id>``."""
        return f"api_key:{self.key_id}"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def effective_scopes(self) -> frozenset[Scope]:
        return self.scopes & SCOPES_BY_ROLE[self.role]

    def require(self, scope: Scope) -> None:
        """ForbiddenError unless this key and this user's role both allow `scope`."""
        if scope not in self.scopes:
            raise ForbiddenError(
                f"This API key lacks the '{scope.value}' scope.",
                required_scope=scope.value,
                key_scopes=sorted(s.value for s in self.scopes),
            )
        if scope not in SCOPES_BY_ROLE[self.role]:
            raise ForbiddenError(
                f"A user with role '{self.role.value}' cannot do this.",
                required_scope=scope.value,
                role=self.role.value,
            )

    def require_any(self, *scopes: Scope) -> None:
        """ForbiddenError unless this key and role allow one of `scopes` (the first is named)."""
        if any(scope in self.effective_scopes for scope in scopes):
            return
        self.require(scopes[0])

    def require_admin(self) -> None:
        """Admin role and the admin scope (user management, other users' keys)."""
        self.require(Scope.ADMIN)

    @property
    def owner_filter(self) -> UUID | None:
        """The owner whose workflows this caller is limited to; None for an admin."""
        return None if self.is_admin else self.user_id
