"""`sftune memprofile MODEL [TASK]`: peak memory, its breakdown and the step-time split per method and batch
size, each cell measured in its own process (or estimated without running, --estimate)."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from sftune.cli import app
from sftune.cli.common import examples, user_errors
from sftune.cli.options import MaskMode, SetItems
from sftune.errors import UsageError

_DEFAULT_METHODS = "full,bitfit,child-tuning-d,dps-dense,dps-mix,stochastic"
_FORMATS = ("table", "json", "csv", "markdown")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} '{text}': expected comma-separated integers, e.g. 16,32.") from None
    if not values or min(values) < 1:
        raise UsageError(f"{what} '{text}': expected positive integers, e.g. 16,32.")
    return list(dict.fromkeys(values))


def _methods(text: str) -> list[str]:
    from sftune.registry import get_method

    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not names:
        raise UsageError("--methods: give at least one method, e.g. --methods full,dps-mix.")
    for name in names:
        get_method(name)  # unknown names: the standard one-line error with a suggestion
    return names


@app.command(help="Profile memory and step time of methods x batch sizes: each cell runs a few real training "
                  "steps on synthetic batches (batch x seq-len random token ids) in its own process, so peaks "
                  "are clean and an out-of-memory cell does not stop the others. TASK only sets the number of "
                  "labels. --estimate computes the breakdown without running anything.",
             epilog=examples(
    "sftune memprofile shape:roberta-base --methods full,bitfit,dps-mix,stochastic --batch-sizes 8,16 --cpu",
    "sftune memprofile roberta-large --methods full,dps-mix --batch-sizes 16,32 --estimate"))
@user_errors
def memprofile(
    model: Annotated[str, typer.Argument(help="Local directory, Hub id, 'minilm', or a built-in random-weight "
                                              "shape: shape:roberta-base, shape:roberta-large, "
                                              "shape:bert-base-uncased, shape:bert-large-uncased; decoders "
                                              "shape:smollm2-135m, shape:qwen2.5-0.5b, shape:llama-3.2-1b, "
                                              "shape:llama-3-8b (estimate only).")],
    task: Annotated[str, typer.Argument(help="Task whose label count the head gets (default rte).")] = "rte",
    methods: Annotated[str, typer.Option("--methods", "-m", help="Comma-separated methods (columns).")]
    = _DEFAULT_METHODS,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", "-b", help="Comma-separated batch sizes (rows).")]
    = "16,32",
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per example (exactly; no padding).")] = 128,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps per cell measured for memory, then as "
                                                       "many again timed without the memory tracking (the first "
                                                       "timed step is left out; at least 2).")] = 3,
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16 or bf16 (mixed precision).")] = "fp32",
    mask_mode: MaskMode = "grad",
    random_init: Annotated[bool, typer.Option("--random-init", help="Build MODEL from its config with random "
                                                                   "weights (its weights are not read).")] = False,
    estimate: Annotated[bool, typer.Option("--estimate", help="Compute the breakdown analytically on a "
                                                              "meta-device model: nothing runs or is allocated.")]
    = False,
    cpu: Annotated[bool, typer.Option("--cpu", help="Run on the CPU even when CUDA is available.")] = False,
    set_: SetItems = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds a cell may take before it is "
                                                                    "stopped and reported as a timeout.")] = None,
    format_: Annotated[str, typer.Option("--format", "-f",
                                         help="table (Rich), json, csv or markdown on stdout.")] = "table",
) -> None:
    from sftune.config import parse_set
    from sftune.models import max_tokens
    from sftune.profile import make_report
    from sftune.profile.common import PRECISIONS, Cell, load_config, run_config, split_sets
    from sftune.tasks import get_task

    if format_ not in _FORMATS:
        raise UsageError(f"--format '{format_}': expected table, json, csv or markdown.")
    if precision not in PRECISIONS:
        raise UsageError(f"--precision '{precision}': expected fp32, fp16 or bf16.")
    if mask_mode not in ("grad", "update"):
        raise UsageError(f"--mask-mode '{mask_mode}': expected grad or update.")
    if steps < 2:
        raise UsageError(f"--steps {steps}: at least 2 (the first step is warm-up, left out of the times).")
    if seq_len < 1:
        raise UsageError(f"--seq-len {seq_len}: expected a positive number of tokens.")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout {timeout:g}: expected a positive number of seconds.")
    task_name = get_task(task).name
    names = _methods(methods)
    sizes = _int_list(batch_sizes, "--batch-sizes")
    sets = parse_set(set_ or [])
    per_method = split_sets(sets, names)
    cells = [Cell(model=model, task=task_name, method=m, batch_size=bs, seq_len=seq_len, steps=steps,
                  precision=precision, mask_mode=mask_mode, random_init=random_init, cpu=cpu, sets=per_method[m])
             for bs in sizes for m in names]
    configs = {m: run_config(next(c for c in cells if c.method == m)) for m in names}  # every error now
    config = load_config(model, task_name, next(iter(configs.values())).model.dropout)
    limit = max_tokens(config)
    if limit is not None and seq_len > limit:
        raise UsageError(f"--seq-len {seq_len}: {model} takes at most {limit} tokens.")
    for cfg in configs.values():
        if cfg.train.grad_accum > 1 and any(bs % cfg.train.grad_accum for bs in sizes):
            raise UsageError(f"every batch size must be divisible by train.grad_accum ({cfg.train.grad_accum}).")

    start = time.perf_counter()
    total = len(cells)
    done = []

    def progress(cell, result) -> None:
        done.append(cell)
        status = result.get("status")
        if status in ("ok", "estimated"):
            from sftune.profile.report import human_bytes

            what = f"peak {human_bytes(result['peak_bytes'])}"
            if result.get("time"):
                what += f", {result['time']['total']:.3f} s/step"
        else:
            what = f"{status}: {result.get('error', '')}"
        typer.echo(f"[{len(done)}/{total}] {cell.label}: {what} ({time.perf_counter() - start:.0f} s)", err=True)

    report = make_report(cells, estimate=estimate, timeout=timeout, on_result=progress, sets=sets)
    if format_ == "json":
        from sftune.profile.report import to_json

        typer.echo(to_json(report))
    elif format_ in ("csv", "markdown"):
        from sftune.profile.report import to_csv, to_markdown

        typer.echo((to_csv if format_ == "csv" else to_markdown)(report), nl=False)
    else:
        from sftune.profile.report import render_table

        render_table(report)
    if not any(c.get("status") in ("ok", "estimated") for c in report["cells"]):
        raise typer.Exit(1)
