"""`sftune methods` and `sftune presets ls|show|cp`: what is available, generated from the registry and files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sftune.artifacts import atomic_write_text
from sftune.cli import app
from sftune.cli.common import check_format, examples, user_errors
from sftune.cli.options import Format
from sftune.config import dump_yaml
from sftune.errors import UsageError
from sftune.presets import Preset, all_presets, load_preset
from sftune.registry import describe_options, methods, regularizers

presets_app = typer.Typer(help="List, show and copy hyperparameter presets.", no_args_is_help=True,
                          epilog=examples("sftune presets ls", "sftune presets show roberta --task rte",
                                          "sftune presets cp roberta my-roberta.yaml"))
app.add_typer(presets_app, name="presets")


def methods_document() -> list[dict]:
    out = []
    for kind, table in (("method", methods()), ("regulariser", regularizers())):
        for name, cls in table.items():
            out.append({"name": name, "kind": kind, "summary": cls.summary, "details": cls.details,
                        "options": [{"name": o.name, "type": o.type, "default": o.default, "help": o.help}
                                    for o in describe_options(cls)]})
    return out


def methods_markdown() -> str:
    """The methods table of docs/methods.md (generated: a test keeps the file in sync)."""
    lines = ["| name | kind | what it trains | options (default) |", "|---|---|---|---|"]
    for m in methods_document():
        opts = "; ".join(f"`{o['name']}` ({o['default']}): {o['help']}" for o in m["options"]) or "-"
        lines.append(f"| `{m['name']}` | {m['kind']} | {m['summary']} | {opts} |")
    return "\n".join(lines) + "\n"


@app.command("methods", help="List the fine-tuning methods and their options.",
             epilog=examples(
    "sftune methods",
    "sftune methods --format json"))
@user_errors
def list_methods(format_: Format = "table") -> None:
    if format_ == "markdown":
        typer.echo(methods_markdown(), nl=False)
        return
    check_format(format_)
    doc = methods_document()
    if format_ == "json":
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    table = Table(title="Methods (--method NAME, options --set method.OPTION=VALUE) and regularisers "
                  "(--reg NAME:OPTION=VALUE)", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("kind")
    table.add_column("what it trains")
    table.add_column("options")
    for m in doc:
        opts = "\n".join(f"{o['name']}={o['default']}: {o['help']}" for o in m["options"]) or "-"
        table.add_row(m["name"], m["kind"], m["summary"], opts)
    Console().print(table)


@presets_app.command("ls", help="List presets.",
                     epilog=examples(
    "sftune presets ls",
    "sftune presets ls --format json"))
@user_errors
def presets_ls(format_: Format = "table") -> None:
    check_format(format_)
    rows = []
    for name, p in all_presets().items():
        full = load_preset(name)
        rows.append({"name": name, "description": full.description, "tasks": full.tasks, "path": str(p.path)})
    if format_ == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="Presets (--preset NAME)", title_justify="left")
    for col in ("preset", "description", "per-task values"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["description"], ", ".join(r["tasks"]) or "all tasks alike")
    Console().print(table)
    Console().print("Methods: " + ", ".join(methods()) + " (details: sftune methods)")


@presets_app.command("show", help="Print a preset as a preset file (with --task, resolved for that task): save "
                                   "the output and pass it to --preset.",
                     epilog=examples(
                         "sftune presets show roberta",
                         "sftune presets show roberta --task rte > my-roberta.yaml",
                         "sftune train roberta-base rte --preset my-roberta.yaml"))
@user_errors
def presets_show(name: Annotated[str, typer.Argument(help="Preset name or YAML path.")],
                 task: Annotated[str | None, typer.Option("--task", help="Resolve for this task.")] = None,
                 format_: Format = "table") -> None:
    check_format(format_)
    preset = load_preset(name)
    if format_ == "json":  # for scripts: the values themselves (resolved for --task)
        typer.echo(json.dumps(preset.for_task(_task(task)) if task else preset.data, indent=2))
    else:
        typer.echo(preset_text(preset, task).rstrip())


@presets_app.command("cp", help="Copy a preset to FILE to edit it (as torchtune's 'tune cp'); with --task, "
                                "resolved for that task.",
                     epilog=examples(
                         "sftune presets cp roberta my-roberta.yaml",
                         "sftune presets cp dps my-dps-rte.yaml --task rte",
                         "sftune train roberta-base rte --preset my-roberta.yaml"))
@user_errors
def presets_cp(name: Annotated[str, typer.Argument(help="Preset name or YAML path.")],
               file: Annotated[Path, typer.Argument(help="New preset file (.yaml or .yml).")],
               task: Annotated[str | None, typer.Option("--task", help="Resolve for this task.")] = None,
               force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False) -> None:
    if file.suffix not in (".yaml", ".yml"):
        raise UsageError(f"preset file {file}: expected a name ending in .yaml or .yml (what --preset reads).")
    if file.exists() and not force:
        raise UsageError(f"{file} exists. Choose another name, or pass --force to replace it.")
    preset = load_preset(name)
    # Without --task the file is copied as it is, comments included.
    text = preset_text(preset, task) if task else preset.path.read_text(encoding="utf-8")
    atomic_write_text(file, text)
    typer.echo(f"Wrote {file}; edit it, then: sftune train MODEL {task or 'TASK'} --preset {file}")


def _task(task: str) -> str:
    from sftune.tasks import get_task

    return get_task(task).name


def preset_text(preset: Preset, task: str | None) -> str:
    """A preset as the text of a preset file that --preset reads back. With a task, its per-task values are
    merged into `config` and the other tasks dropped; every other section is kept as it is."""
    header = f"# preset {preset.name} ({preset.path})"
    data = preset.data
    if task:
        task = _task(task)
        data = {k: v for k, v in data.items() if k != "tasks"}
        data["config"] = preset.for_task(task)
        header += f", resolved for {task}: sftune train MODEL {task} --preset THIS_FILE"
    return header + "\n" + dump_yaml(data)


def write_methods_table(path: str) -> None:
    """Regenerate the table block of docs/methods.md (see tests/test_docs.py for the command)."""
    from pathlib import Path

    text = Path(path).read_text()
    head, rest = text.split("<!-- methods-table:begin -->\n", 1)
    _, tail = rest.split("<!-- methods-table:end -->", 1)
    Path(path).write_text(f"{head}<!-- methods-table:begin -->\n{methods_markdown()}<!-- methods-table:end -->{tail}")

