"""How every fdq command line is built and run.

Each command keeps its parser beside its code in one shape: ``register(subparsers)`` adds its
subcommand to ``fdq`` with ``set_defaults(func=...)`` and returns the parser (``zoo``, ``detect``,
``eval``, ``export``, ``deploy`` and ``profile`` in this package; ``quantize``, ``compare`` and
``train`` in their own modules). :func:`fdq_parser` puts commands under ``fdq``,
:func:`program_parser` makes one a program of its own (``fdq-deploy``, ``fdq-profile``), and
:func:`run_program` parses and runs: an error is one ``PROG: error: ...`` line and exit 1.
Every command takes ``--quiet`` (added here, once): no progress line even on a terminal.
Only light modules are imported here and at the top of each command, so ``fdq --help`` loads no
torch, OpenCV or paramiko.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any, Callable, Iterable, List, Optional, Sequence

from fdq.calibration.progress import set_quiet
from fdq.device.cliargs import Parser
from fdq.device.outputs import OutputRefused

Register = Callable[[Any], argparse.ArgumentParser]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """Run one command's function the way every fdq console script does: an error is one
    ``PROG: error: ...`` line and exit 1, Ctrl-C is exit 130."""
    try:
        return func(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (CliError, OutputRefused, ValueError, OSError, RuntimeError, KeyError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def fdq_parser(registers: Iterable[Register]) -> Parser:
    """``fdq`` with the subcommands that ``registers`` add, in that order."""
    parser = Parser(prog="fdq", description="Quantize face detectors and measure them on the device.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in registers:
        add_quiet(register(subparsers))
    return parser


def add_quiet(parser: Any) -> Any:
    """``--quiet`` on a parser (or an argument group), the same for every command; on a command with
    actions of its own (``fdq zoo fetch``), on each action, where the options go."""
    actions = [a for a in getattr(parser, "_actions", ()) if isinstance(a, argparse._SubParsersAction)]
    for sub in (p for a in actions for p in a.choices.values()):
        add_quiet(sub)
    if not actions:
        parser.add_argument("--quiet", action="store_true",
                            help="no progress lines (they are drawn on stderr only when it is a terminal)")
    return parser


class _Program:
    """Stands in for argparse's subparsers so that ``register`` makes a program's own parser."""

    def __init__(self, prog: str) -> None:
        self.prog = prog

    def add_parser(self, name: str, **kwargs: Any) -> Parser:
        kwargs.pop("help", None)  # the command's line in fdq's list of commands
        return Parser(prog=self.prog, **kwargs)


def program_parser(register: Register, prog: str) -> argparse.ArgumentParser:
    """The parser ``register`` adds to ``fdq``, as the program ``prog`` (usage and errors under that name)."""
    return add_quiet(register(_Program(prog)))


def run_program(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the command it names. The command
    sees what was typed as ``args.command_line`` (fdq-profile records it with each run)."""
    words: List[str] = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    args.command_line = shlex.join([parser.prog, *map(str, words)])
    set_quiet(args.quiet)
    return run_command(args.func, args, parser.prog)
