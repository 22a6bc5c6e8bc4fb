"""Memory and step-time profiles of methods x batch sizes (`sftune memprofile`).

    common.py    cells, model configs (local, Hub, built-in shapes), synthetic batches, run configs
    memory.py    measurement: one child process per cell, peak memory, parts, PhaseTimer split
    meter.py     process memory: resident (VmRSS/VmHWM, glibc's mmap threshold) or CUDA-allocated peak
    estimate.py  the analytic breakdown on a meta-device model (`--estimate`)
    report.py    the appendix-F table, step-time and breakdown tables, JSON, CSV

`make_report()` runs (or estimates) every cell and returns one JSON-ready mapping.
"""

from __future__ import annotations

from typing import Any, Callable

from sftune.profile.common import DEFAULT_METHODS, LEGEND, Cell

__all__ = ["Cell", "DEFAULT_METHODS", "make_report"]


def make_report(cells: list[Cell], estimate: bool = False, timeout: float | None = None,
                on_result: Callable[[Cell, dict], None] | None = None,
                sets: dict[str, str] | None = None) -> dict[str, Any]:
    from sftune.profile.report import annotate

    if estimate:
        from sftune.profile.estimate import estimate as run

        results = run(cells)
        if on_result:
            for cell, result in zip(cells, results):
                on_result(cell, result)
    else:
        from sftune.profile.memory import measure

        results = measure(cells, timeout=timeout, on_result=on_result)
    first = cells[0]
    methods = list(dict.fromkeys(c.method for c in cells))
    sizes = list(dict.fromkeys(c.batch_size for c in cells))
    device = next((r["device"] for r in results if r.get("device")), None)
    report = {
        "mode": "estimated" if estimate else "measured",
        "model": first.model, "task": first.task, "seq_len": first.seq_len, "steps": first.steps,
        "precision": first.precision, "mask_mode": first.mask_mode, "random_init": first.random_init,
        "sets": dict(sets or {}), "methods": methods, "batch_sizes": sizes, "device": device,
        "data": "synthetic: batch_size x seq_len random token ids (never the pad id), all-ones attention mask, "
                "random labels; the task only sets the number of labels",
        "legend": LEGEND["estimated" if estimate else "measured"],
        "cells": results,
    }
    return annotate(report)
