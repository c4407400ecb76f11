"""The `flowforge` command: FlowForge's commands from any directory, for scripts.

``flowforge migrate``, ``flowforge seed``, ... run the same commands as
``piccolo flowforge migrate``, ``piccolo flowforge seed``, ..., with two
differences a deploy script depends on:

* it always finds its configuration: it sets ``PICCOLO_CONF`` to
  ``flowforge.piccolo_conf`` (the one in the package). Piccolo's CLI looks for
  ``piccolo_conf.py`` in the working directory, and without it answers
  ``piccolo flowforge migrate`` with "Unrecognised command" and exit status 0;
* a missing or unknown command is one line on stderr and exit status 2.

Every other outcome is the command's own: 0 when it did its work, 2 for a bad
option or setting, 1 when it failed (e.g. the database cannot be reached).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

PROGRAM = "flowforge"
CONF = "flowforge.piccolo_conf"


def main() -> None:
    """Entry point of the `flowforge` console script (pyproject.toml)."""
    arguments = [argument for argument in sys.argv[1:] if argument != "--trace"]
    # Before the conf is imported: Piccolo's migration runner finds the engine
    # and the apps through it.
    os.environ["PICCOLO_CONF"] = CONF
    importlib.import_module(CONF)  # bad settings: one message per problem, exit 2

    from targ import CLI

    from flowforge.commands import COMMANDS

    names = {
        name: function for function, aliases in COMMANDS for name in (function.__name__, *aliases)
    }
    if not arguments or arguments[0] in {"--help", "-h", "help"}:
        _overview(COMMANDS, help_asked=bool(arguments))
    if arguments[0] not in names:
        _fail(f"unknown command {arguments[0]!r}; `{PROGRAM} --help` lists the commands")

    cli = CLI(description="FlowForge")
    for function, aliases in COMMANDS:
        cli.register(function, aliases=aliases)
    cli.run()  # the command's own options, help and exit status (cliargs.command)


def _overview(
    commands: Sequence[tuple[Callable[..., None], list[str]]], *, help_asked: bool
) -> NoReturn:
    lines = [f"usage: {PROGRAM} <command> [options]   ({PROGRAM} <command> --help)", ""]
    for function, _aliases in commands:
        summary = (function.__doc__ or "").strip().splitlines()[0]
        lines.append(f"  {function.__name__:<20} {summary}")
    print("\n".join(lines), file=sys.stdout if help_asked else sys.stderr)
    raise SystemExit(0 if help_asked else 2)


def _fail(message: str) -> NoReturn:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    raise SystemExit(2)
