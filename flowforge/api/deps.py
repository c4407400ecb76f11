"""FastAPI dependencies every route imports.

``Transaction`` gives a request exactly one database transaction: it commits
after the route returns and before the response is sent, and rolls back on
any exception. ``scope="function"`` is what puts the COMMIT before the
response: with FastAPI's default (request scope) the commit would run after
the response had gone out, and a failed commit would reach the client as 200.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends

from flowforge.db.engine import DB, SafeTransaction
from flowforge.errors import translated_db_errors


async def db_transaction() -> AsyncIterator[SafeTransaction]:
    """One transaction per request; driver errors leave it as domain errors."""
    async with translated_db_errors(), DB.transaction() as transaction:
        yield transaction


Transaction = Annotated[SafeTransaction, Depends(db_transaction, scope="function")]
