"""`sftune methods` and `sftune presets ls|show`: what is available, generated from the registry and files."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sftune.cli import app
from sftune.cli.common import Format, check_format, user_errors
from sftune.config import dump_yaml
from sftune.presets import all_presets, load_preset
from sftune.registry import describe_options, methods, regularizers

presets_app = typer.Typer(help="List and show hyperparameter presets.", no_args_is_help=True)
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


@app.command("methods", help="List the fine-tuning methods and their options.")
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


@presets_app.command("ls", help="List presets.")
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


@presets_app.command("show", help="Show a preset's values (for one task with --task).")
@user_errors
def presets_show(name: Annotated[str, typer.Argument(help="Preset name or YAML path.")],
                 task: Annotated[str | None, typer.Option("--task", help="Resolve for this task.")] = None,
                 format_: Format = "table") -> None:
    check_format(format_)
    preset = load_preset(name)
    if task:
        from sftune.tasks import get_task

        data = preset.for_task(get_task(task).name)
    else:
        data = preset.data
    if format_ == "json":
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(f"# {preset.name}: {preset.path}")
        typer.echo(dump_yaml(data).rstrip())


def write_methods_table(path: str) -> None:
    """Regenerate the table block of docs/methods.md (see tests/test_docs.py for the command)."""
    from pathlib import Path

    text = Path(path).read_text()
    head, rest = text.split("<!-- methods-table:begin -->\n", 1)
    _, tail = rest.split("<!-- methods-table:end -->", 1)
    Path(path).write_text(f"{head}<!-- methods-table:begin -->\n{methods_markdown()}<!-- methods-table:end -->{tail}")

