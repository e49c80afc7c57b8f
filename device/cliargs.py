"""What every fdq command line shares: one-line errors, defaults shown in --help, checked numbers.

Lives on the device side because the board's runner and demo use it too (they import nothing from
the host side); the host's ``fdq``, ``fdq-deploy`` and ``fdq-profile`` use the same class.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, List, NoReturn

NATIVE = "native"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default (when it has a meaningful one) and marks required options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            text += " (required)"
        if not action.option_strings or isinstance(action, argparse._HelpAction) or "%(default)" in text:
            return text
        if action.default is False:  # a flag
            return text + " (default: off)"
        if action.default not in (None, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with fdq's error style: ``PROG: error: MESSAGE (see --help)`` on one line, exit 2.

    Subcommands report under the program's own name (``fdq``), not ``fdq quantize``.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog.split()[0]}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _at_least(kind: str, minimum: float, cast: Callable[[str], Any], noun: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} must be {noun}, got {text!r}") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{kind} must be >= {minimum:g}, got {text}")
        return value

    return parse


def int_at_least(kind: str, minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, or an error naming ``kind``."""
    return _at_least(kind, minimum, int, "an integer")


def float_at_least(kind: str, minimum: float) -> Callable[[str], float]:
    """An argparse type: a number >= ``minimum``, or an error naming ``kind``."""
    return _at_least(kind, minimum, float, "a number")


def probability(kind: str) -> Callable[[str], float]:
    """An argparse type: a number in [0, 1), or an error naming ``kind``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} must be a number, got {text!r}") from None
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"{kind} must lie in [0, 1), got {value}")
        return value

    return parse


def seconds(option: str) -> Callable[[str], float]:
    """An argparse type: seconds above 0, or an error naming ``option``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes seconds, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{option} must be above 0 s, got {text}")
        return value

    return parse


def duration(option: str) -> Callable[[str], float]:
    """An argparse type: an age, ``30m``, ``12h``, ``7d`` or plain seconds, as seconds >= 0."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def parse(text: str) -> float:
        number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
        try:
            value = float(number) * unit
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes an age such as 30m, 12h or 7d, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{option} must not be negative, got {text}")
        return value

    return parse


def percentage(option: str) -> Callable[[str], float]:
    """An argparse type: ``5%`` or ``5`` (both 5 %), ``0.1%``, as a share >= 0 (0.05, 0.001)."""
    def parse(text: str) -> float:
        try:
            value = float(text.strip().removesuffix("%")) / 100
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} takes a percentage such as 5% or 0.1%, got {text!r}") from None
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"{option} must be 0 % or more, got {text}")
        return value

    return parse


def comma_list(parse: Callable[[str], Any]) -> Callable[[str], List[Any]]:
    """An argparse type: ``a,b,c``, each item through ``parse``."""
    def parse_all(text: str) -> List[Any]:
        items = [item.strip() for item in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"empty item in {text!r}")
        return [parse(item) for item in items]

    return parse_all


def long_side(text: str) -> int:
    """An argparse type for ``--long-side``: pixels >= 32, or ``native`` (kept as 0: no resize)."""
    if text.strip().lower() == NATIVE:
        return 0
    return int_at_least("--long-side", 32)(text)


def describe_long_side(value: int) -> object:
    """How a long side is recorded in results: its pixels, or ``"native"``."""
    return value if value > 0 else NATIVE
