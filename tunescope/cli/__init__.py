"""The ``tunescope`` command.

stdout is data, stderr is diagnostics. Exit codes are :class:`ExitCode`.
Heavy modules (torch, textual, scipy) are imported inside the commands that
need them, so ``tunescope --help`` and ``tunescope analyze`` start quickly.

One module per command in this package, each with ``add(sub)`` (its parser,
``set_defaults(handler=...)``) and its handler; :data:`COMMANDS` lists them in
the order ``--help`` shows. To add a command, write ``tunescope/cli/NAME.py``
like its neighbours and add ``NAME.add`` to :data:`COMMANDS`. Nothing imports
this package: it is the top of the layers.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tunescope import __version__
from tunescope.cli import (
    analyze,
    compare,
    explain,
    export,
    ingest,
    metrics,
    query,
    schema,
    train,
    tui,
    watch,
)
from tunescope.errors import ExitCode, TunescopeError
from tunescope.say import error
from tunescope.suggest import did_you_mean

COMMANDS: list[Callable[[Any], None]] = [
    ingest.add,
    query.add,
    export.add,
    schema.add,
    analyze.add,
    analyze.add_report,
    explain.add,
    watch.add,
    metrics.add,
    tui.add,
    train.add,
    compare.add,
]


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for mistyped commands, choices and options."""

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2))
            message += did_you_mean(m.group(1), choices)
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m and m.group(1).startswith("-"):
            options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            message += did_you_mean(m.group(1).split("=")[0], options)
        super().error(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # report an unknown option with the usage of the command it was given to
        chosen = _SUBPARSERS.get(getattr(args, "command", None) or "", parser)
        chosen.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        return int(args.handler(args))
    except TunescopeError as e:
        error(str(e))
        return int(e.exit_code)
    except KeyboardInterrupt:
        error("interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tunescope",
        description=(
            "Find out why a fine-tuning run went wrong: ingest training logs into "
            "DuckDB, detect spikes, divergence, dead adapters, stragglers and memory "
            "growth, and suggest fixes."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tunescope {__version__}")
    sub = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest="command", parser_class=Parser
    )
    for add in COMMANDS:
        add(sub)
    _SUBPARSERS.clear()
    _SUBPARSERS.update(sub.choices)
    return parser


_SUBPARSERS: dict[str, argparse.ArgumentParser] = {}
