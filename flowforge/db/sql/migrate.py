"""The migration lock's statements (flowforge.commands.migrate): a session advisory lock
held while Piccolo migrates, taken by polling (never a blocking pg_advisory_lock()).
"""

from __future__ import annotations

from typing import Final, LiteralString

TRY_LOCK: Final[LiteralString] = "SELECT pg_try_advisory_lock($1)"
UNLOCK_ALL: Final[LiteralString] = "SELECT pg_advisory_unlock_all()"
