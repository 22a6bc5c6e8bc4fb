"""`sftune sweep`: grids x methods x seeds of independent `sftune train` runs, resumable, summarised.

    spec.py        the sweep specification (CLI options, YAML file, grid presets)
    plan.py        the specification -> validated, named runs, each with its resolved configuration
    runner.py      runs them as `sftune train --config` subprocesses, J at a time, skipping and resuming
    summary.py     mean ± std per config, best config per method, results.csv / summary.json
    case_study.py  easy/hard dev examples per method over its seeds (DPS appendix A)

See docs/sweeps.md for the user's view.
"""

from sftune.sweep.plan import Run, expand
from sftune.sweep.spec import SweepSpec, grid_presets, load_grid_preset, make_spec

__all__ = ["Run", "SweepSpec", "expand", "grid_presets", "load_grid_preset", "make_spec"]
