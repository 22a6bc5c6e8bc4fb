"""Run by tests/distributed/test_transfer_ddp.py under torchrun (1 or 2 CPU processes): the run's model on a
target's rows through SourceModel; rank 0 writes the row ids and probabilities it gathered."""

import atexit
import json
import os
import sys
from pathlib import Path

import datasets

from sftune.artifacts import RunDir
from sftune.run import stored_config
from sftune.transfer.source_model import SourceModel


def record_group_left(out: str) -> None:
    """Registered before sftune builds its accelerator, so it runs after sftune's own exit handler (atexit runs
    last-in first-out): whether the process group was torn down before the interpreter's teardown."""
    import torch.distributed as dist

    rank = os.environ.get("RANK", "0")
    Path(f"{out}.rank{rank}.left").write_text(json.dumps(not dist.is_initialized()))


def main(run_path: str, rows_path: str, out: str) -> None:
    atexit.register(record_group_left, out)
    run = RunDir(run_path)
    rows = datasets.Dataset.from_dict(json.loads(Path(rows_path).read_text()))
    source = SourceModel(run, stored_config(run), {"rows": rows})
    source.build(need_train=False)
    idx, probs = source.probabilities("rows")
    if source.accelerator.is_main_process:
        Path(out).write_text(json.dumps({"processes": source.accelerator.num_processes, "idx": idx,
                                         "probabilities": probs.tolist()}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
