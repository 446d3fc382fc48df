"""User-facing errors: one sentence of what is wrong, one of how to fix it; exit code 2."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable
from typing import NoReturn


class AlignlabError(Exception):
    """A mistake the user can fix (bad config, missing file, bad dataset).

    The CLI prints the message without a traceback and exits with code 2.
    """

    exit_code = 2


def nearest(name: str, choices: Iterable[str]) -> str | None:
    """The closest valid name to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' when a close valid name exists, else a list of valid names."""
    choices = sorted(set(choices))
    best = nearest(name, choices)
    if best:
        return f" Did you mean '{best}'?"
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f" Valid choices: {shown}."


class CommandParser(argparse.ArgumentParser):
    """argparse for the subcommands (``chat``, ``export``): a mistake is an AlignlabError (one
    line, exit 2) instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise AlignlabError(f"{message}. See `{self.prog} --help`.")
