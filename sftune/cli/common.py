"""What every command uses: the one-line error wrapper, help examples, the --format check."""

from __future__ import annotations

import functools
import sys

import typer

from sftune.errors import UsageError


def user_errors(fn):
    """Turn UsageError into one line on stderr and exit code 2 (also under Typer's test runner)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            typer.echo(f"sftune: error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # a full disk, a read-only folder, a permission: one line, no traceback
            typer.echo(f"sftune: error: {io_failure(e)}", err=True)
            raise typer.Exit(EXIT_IO) from None

    return wrapper


def examples(*lines: str) -> str:
    """A help epilog of example command lines, one per line."""
    return "Examples:\n" + "\n".join(f"  {line}" for line in lines)


EXIT_IO = 1  # a failed read or write (documented in docs/reliability.md)


def io_failure(e: OSError) -> str:
    where = e.filename or "a file (the system did not say which)"
    cause = e.strerror or str(e) or type(e).__name__
    return " ".join(f"file error on {where}: {cause}. Free space or fix the permissions there, then rerun "
                    "(a training run continues with --resume).".split())


def check_format(fmt: str) -> str:
    if fmt not in ("table", "json"):
        raise UsageError(f"--format '{fmt}': expected table or json.")
    return fmt


def is_terminal() -> bool:
    return sys.stdout.isatty()
