"""The `piccolo flowforge ...` commands: the only code that prints or exits.

Layers point one way: database (``flowforge.db``) -> domain (``flowforge.*``)
-> commands (this package) and HTTP (``flowforge.api``). A command parses its
arguments, runs domain functions in a transaction, and prints the outcome.

* :mod:`flowforge.commands.migrate`: ``migrate`` (every app, under an advisory lock).
* :mod:`flowforge.commands.seed`: ``seed``.
* :mod:`flowforge.commands.bootstrap`: ``create_user``, ``create_api_key``,
  ``create_admin_login``.
* :mod:`flowforge.commands.operations`: ``relay``, ``outbox_status``,
  ``outbox_requeue``, ``prune``, ``reap``, ``partitions``, ``backfill_versions``.
* :mod:`flowforge.commands.serve`: ``python -m flowforge.commands.serve`` (``make
  serve``), uvicorn's command line exiting 0 after a graceful stop.

``flowforge.piccolo_app`` registers them. Importing this package must stay
cheap: the API process imports it (through the app registry it reads for
readiness), so the relay and the Redis client are imported only when the
``relay`` command runs (tests/test_layers.py).
"""

from collections.abc import Callable
from typing import Any

from flowforge.commands import bootstrap, migrate, operations, seed
from flowforge.commands.cliargs import command

# (command, aliases), in the order `piccolo flowforge` lists them.
_COMMANDS: list[tuple[Callable[..., Any], list[str]]] = [
    # Migrations for every app under an advisory lock (what deployments run).
    (migrate.migrate, []),
    (seed.seed, ["seed-data"]),
    (bootstrap.create_user, []),
    (bootstrap.create_api_key, []),
    (bootstrap.create_admin_login, []),
    (operations.relay, []),
    (operations.outbox_status, []),
    (operations.outbox_requeue, []),
    (operations.prune, []),
    (operations.reap, []),
    (operations.partitions, []),
    (operations.backfill_versions, []),
]

# Each parses its own options (`--x value` and `--x=value`; bad values are one
# line and exit 2): flowforge/commands/cliargs.py.
COMMANDS: list[tuple[Callable[..., None], list[str]]] = [
    (command(function, aliases=aliases), aliases) for function, aliases in _COMMANDS
]
