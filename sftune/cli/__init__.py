"""The `sftune` command: a Typer app, one module per command.

`main()` is the console entry point: user errors (`UsageError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from sftune.errors import UsageError

app = typer.Typer(
    name="sftune",
    help="Sparse, subnetwork fine-tuning of pre-trained language models (DPS, Child-Tuning, Stochastic "
         "Tuning, BitFit and friends).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)



def _load_commands() -> None:
    # Every module of sftune.cli that defines commands registers them on `app` when imported.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name not in ("common", "render"):
            importlib.import_module(f"{__name__}.{module.name}")


_load_commands()


def quiet_libraries() -> None:
    """The CLI draws its own progress: silence transformers' load reports and datasets' progress bars."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


@app.callback()
def _root() -> None:
    quiet_libraries()


def main() -> None:
    try:
        app(standalone_mode=True)
    except UsageError as e:
        print(f"sftune: error: {e}", file=sys.stderr)
        sys.exit(2)
