"""User-facing errors: one line, exit code 2, no traceback.

Anything the user can fix (a bad name, a missing file, a malformed value) raises `UsageError`; the CLI
prints its message on one line to stderr and exits with status 2. Internal bugs stay ordinary exceptions.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(Exception):
    """A problem with the user's input. The message names the input, what was expected and what to do."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep it on one line whatever the caller passed in.
        super().__init__(" ".join(str(message).split()))


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean X?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown(kind: str, word: str, choices: Iterable[str], hint: str = "") -> UsageError:
    """The standard 'unknown X' error: what was given, the closest match, and what is allowed."""
    choices = sorted(choices)
    listed = ", ".join(choices) if len(choices) <= 16 else ", ".join(choices[:16]) + ", ..."
    tail = f" {hint}" if hint else ""
    return UsageError(f"unknown {kind} '{word}'.{did_you_mean(word, choices)} Choose one of: {listed}.{tail}")
