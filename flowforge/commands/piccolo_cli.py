"""What FlowForge adds to Piccolo's own CLI (`piccolo ...`) when it imports our conf.

Piccolo's CLI has no hook but the import of ``piccolo_conf`` (it then runs the
command with targ), so :func:`adapt_piccolo_cli` runs there, and only in that process:

* ``piccolo flowforge <unknown>`` exits 2 with one line. targ prints
  "Unrecognised command" and its help page with exit status 0, which a deploy
  script reads as success. (When the conf is not found at all nothing of ours
  runs and Piccolo exits 0 all the same: scripts use the ``flowforge``
  command, flowforge/commands/cli.py, which always finds its conf.)
* ``piccolo migrations forwards|backwards`` take the migration lock
  (:func:`flowforge.commands.migrate.hold_lock_until_exit`): replicas that run
  the plain command at start-up apply each migration once.
* Piccolo's "N migrations haven't been run" start-up warning is left out of
  ``piccolo flowforge migrate`` (it is what that command fixes, as Piccolo
  leaves it out of its own ``migrations`` commands), and has no colour codes
  when stderr is not a terminal (``^[[31m`` in logs).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from flowforge.commands.cliargs import GROUP

# Piccolo's warning, coloured by colorama (piccolo/main.py).
PENDING_WARNING = r"(\x1b\[[0-9;]*m)?=> \d+ migrations? (hasn't|haven't) been run"
# `piccolo migrations ...` commands that change the schema, with their aliases.
MIGRATING_COMMANDS = frozenset({"forwards", "f", "forward", "backwards", "b", "back", "backward"})
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def piccolo_arguments(argv: Sequence[str]) -> list[str] | None:
    """The words after the program when this process is Piccolo's CLI, else None.

    Its entry point (`.venv/bin/piccolo`) or `python -m piccolo.main`.
    """
    if not argv:
        return None
    program = Path(argv[0])
    if program.name != "piccolo" and program.parts[-2:] != ("piccolo", "main.py"):
        return None
    return [argument for argument in argv[1:] if argument != "--trace"]


def adapt_piccolo_cli(argv: Sequence[str] = sys.argv) -> None:
    """Adapt Piccolo's CLI (see the module docstring); a no-op in any other process."""
    arguments = piccolo_arguments(argv)
    if arguments is None:
        return
    _plain_warnings_off_a_terminal()
    helping = "--help" in arguments or "-h" in arguments
    if arguments[:1] == [GROUP]:
        from flowforge.commands import COMMANDS

        names = {name for function, aliases in COMMANDS for name in (function.__name__, *aliases)}
        if len(arguments) < 2 or (helping and arguments[1].startswith("-")):
            _usage_exit(f"piccolo {GROUP}: a command is required", names, 0 if helping else 2)
        if arguments[1] not in names:
            _usage_exit(f"piccolo {GROUP}: unknown command {arguments[1]!r}", names)
        if arguments[1:2] == ["migrate"]:
            warnings.filterwarnings("ignore", message=PENDING_WARNING)
    elif arguments[:1] == ["migrations"] and not helping and _migrates(arguments[1:2]):
        from flowforge.commands.migrate import hold_lock_until_exit

        hold_lock_until_exit()


def _migrates(command: list[str]) -> bool:
    """`piccolo migrations <command>` changes the schema."""
    return bool(command) and command[0] in MIGRATING_COMMANDS


def _usage_exit(message: str, names: set[str], status: int = 2) -> NoReturn:
    stream = sys.stdout if status == 0 else sys.stderr
    print(f"{message} (commands: {', '.join(sorted(names))})", file=stream)
    raise SystemExit(status)


def _plain_warnings_off_a_terminal() -> None:
    """Show warnings without colour codes when they do not go to a terminal."""
    show = warnings.showwarning

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        stream: Any = file if file is not None else sys.stderr
        if not (hasattr(stream, "isatty") and stream.isatty()):
            message = _COLOUR.sub("", str(message))
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
