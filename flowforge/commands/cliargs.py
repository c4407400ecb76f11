"""Command-line options for `flowforge <command>` / `piccolo flowforge <command>`, parsed the usual way.

Piccolo's CLI (targ) reads ``--email admin@x`` as a flag ``email=True`` plus a
stray positional ``admin@x``: only ``--email=admin@x`` works, and a bad value
ends in "The command failed", exit 1 and the whole help page. :func:`command`
wraps each of our commands so that it parses its own options from ``sys.argv``
with argparse, built from the function's signature:

* ``--name value`` and ``--name=value`` both work; a ``bool`` option defaulting
  to False is a flag (``--dry_run``, or ``--dry_run=false``);
* ``int`` options are checked; a missing, unknown or bad option is one line on
  stderr and exit status 2, as is a command's own ``SystemExit("message")``;
* ``--help`` stays targ's: the docstring, usage and each option's description.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, get_type_hints

GROUP = "flowforge"
TRUE = frozenset({"true", "t", "yes", "y", "1"})
FALSE = frozenset({"false", "f", "no", "n", "0"})


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _boolean(text: str) -> bool:
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def program(argv: Sequence[str]) -> str:
    """How the command line names the commands: `flowforge` (flowforge/commands/cli.py)
    or `piccolo flowforge`."""
    return "flowforge" if argv and Path(argv[0]).name == "flowforge" else f"piccolo {GROUP}"


def build_parser(function: Callable[..., Any]) -> argparse.ArgumentParser:
    """An argparse parser for `function`'s keyword options (bool, int or str)."""
    hints = get_type_hints(function)
    parser = _Parser(
        prog=f"{program(sys.argv)} {function.__name__}", add_help=False, allow_abbrev=False
    )
    for name, parameter in inspect.signature(function).parameters.items():
        kind = hints.get(name, str)
        required = parameter.default is inspect.Parameter.empty
        default = None if required else parameter.default
        if kind is bool:
            parser.add_argument(
                f"--{name}",
                nargs="?",
                const=True,
                default=default,
                type=_boolean,
                required=required,
            )
        else:
            parser.add_argument(
                f"--{name}",
                default=default,
                type=_integer if kind is int else str,
                required=required,
                metavar=name.upper(),
            )
    return parser


def command_arguments(names: Sequence[str], argv: Sequence[str]) -> list[str]:
    """The arguments after `piccolo flowforge <command>` or `flowforge <command>` in `argv`
    (targ's `--trace` dropped)."""
    for start in (1, 2):
        if len(argv) > start and argv[start] in names:
            return [argument for argument in argv[start + 1 :] if argument != "--trace"]
    raise UsageError(f"cannot find the command {names[0]!r} in the command line")


def parse(function: Callable[..., Any], argv: Sequence[str], aliases: Sequence[str] = ()) -> Any:
    """`function`'s keyword arguments from the command line; UsageError if they are bad."""
    arguments = command_arguments([function.__name__, *aliases], argv)
    return vars(build_parser(function).parse_args(arguments))


def command(function: Callable[..., Any], *, aliases: Sequence[str] = ()) -> Callable[..., None]:
    """`function` (sync or async) as a Piccolo command that parses its own options."""

    @functools.wraps(function)
    def run(*_targ_args: Any, **_targ_kwargs: Any) -> None:
        # targ's own parse of the options is ignored: it cannot read `--x value`.
        prog = f"{program(sys.argv)} {function.__name__}"
        try:
            options = parse(function, sys.argv, aliases)
        except UsageError as error:
            _usage_exit(prog, str(error))
        try:
            result = function(**options)
            if inspect.iscoroutine(result):
                asyncio.run(result)
        except SystemExit as exit_:
            if isinstance(exit_.code, str):  # a command's own "bad value" message
                _usage_exit(prog, exit_.code)
            raise

    # What targ sees: the same options for --help, none of them typed, so targ
    # converts nothing itself (its int() of a bad value would exit 1 with a page).
    signature = inspect.signature(function)
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p.replace(annotation=str) for p in signature.parameters.values()],
        return_annotation=inspect.Signature.empty,
    )
    run.__annotations__ = {name: str for name in signature.parameters}
    return run


def _usage_exit(prog: str, message: str) -> NoReturn:
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(2)
