"""The command-line conventions every script here shares.

A mistake the user can fix raises `UserError`; `run_cli` turns it into one line on
stderr and exit status 1. Flags get checked types (`positive_int`) and a help text
that shows each default once (`HelpFormatter`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable


class UserError(Exception):
    """A mistake the user can fix; reported as one line, exit status 1."""


def first_line(error: Exception) -> str:
    """An exception's message cut to one short line (its type name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def finite_float(text: str, minimum: float, strict: bool) -> float:
    """A finite number >= MINIMUM (> MINIMUM if STRICT), or an argparse error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise argparse.ArgumentTypeError(f"must be a finite number {'>' if strict else '>='} {minimum:g}, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate)."""
    return finite_float(text, 0.0, strict=True)


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a penalty's coefficient)."""
    return finite_float(text, 0.0, strict=False)


def seed(text: str) -> int:
    """argparse type: a seed numpy, torch and random all accept, 0 <= seed < 2**31."""
    value = int(text)
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**31), got {value}")
    return value


def run_name(text: str) -> str:
    """argparse type: a name for a folder inside --checkpoint-dir and --log-dir, never a path."""
    if text in ("", ".", "..") or any(c in text for c in "/\\\0") or text != text.strip():
        raise argparse.ArgumentTypeError(
            f"must be a plain folder name (no '/', '\\', '..' or surrounding spaces), got {text!r}"
        )
    return text


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad command line reported as one line (and exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def format_time(seconds: float) -> str:
    """Seconds as [Dd ]HH:MM:SS."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    return (f"{days}d " if days else "") + time.strftime("%H:%M:%S", time.gmtime(rest))


def run_cli(command: Callable[[], object]) -> int:
    """Run COMMAND: 0 on success, 1 with one line on stderr for a `UserError`."""
    try:
        command()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
