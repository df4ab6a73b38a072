"""The command-line conventions every script here shares.

A mistake the user can fix raises `UserError`; `run_cli` turns it into one line on
stderr and exit status 1. Flags get checked types (`positive_int`) and a help text
that shows each default once (`HelpFormatter`).
"""

from __future__ import annotations

import argparse
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


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
