"""The `sftune` command: a Typer app, one module per command.

`main()` is the console entry point: user errors (`UsageError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from sftune.cli.common import examples
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



# Every module here that defines commands registers them on `app` when imported; help lists them in this
# order, the order a user needs them (presets, a group, comes last).
COMMAND_MODULES = ("train", "evaluate", "sweep", "analyze", "plot", "transfer", "memprofile", "catalog")


def _load_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def _show_flags_as_flags() -> None:
    """Typer 0.29's help prints a type beside every option, `--dry-run <bool>` included, which reads as if the
    flag took a value. On/off flags take none: show no type for them."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich


_show_flags_as_flags()
_load_commands()


def quiet_libraries() -> None:
    """The CLI draws its own progress: silence transformers' load reports and datasets' progress bars."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _print_version(value: bool) -> None:
    if value:
        from sftune import __version__

        typer.echo(f"sftune {__version__}")
        raise typer.Exit()


@app.callback(epilog=examples("sftune train minilm rte --data-dir ../shared/data/glue --method bitfit",
                              "sftune eval runs/minilm-rte-bitfit-seed42 rte",
                              "sftune sweep minilm rte --data-dir DIR --method full,bitfit --seeds 3",
                              "sftune plot runs/minilm-rte-bitfit-seed42",
                              "sftune methods",
                              "sftune COMMAND --help"))
def _root(version: Annotated[bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    quiet_libraries()


def main() -> None:
    try:
        app(standalone_mode=True)
    except UsageError as e:
        print(f"sftune: error: {e}", file=sys.stderr)
        sys.exit(2)
