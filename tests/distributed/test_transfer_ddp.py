"""`sftune transfer` under two CPU processes (gloo): the targets' rows are shared out and gathered back, so rank 0
holds every row once, in row order, with one process's probabilities."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_transfer_package import make_run

WORKER = Path(__file__).with_name("transfer_worker.py")


def test_two_processes_gather_every_row_once_in_order(tiny_bert, glue_dir, tmp_path):
    if importlib.util.find_spec("torch.distributed.run") is None:
        pytest.skip("torch.distributed.run is not available")
    run, _, _ = make_run(tiny_bert, tmp_path, eval_batch_size=4)
    with open(glue_dir / "RTE" / "dev.tsv", encoding="utf-8") as f:
        pairs = [line.rstrip("\n").split("\t")[1:3] for line in list(f)[1:12]]
    # 11 rows in batches of 4, split between 2 processes: the last batch is uneven (accelerate pads it, and
    # gathering must drop the padding)
    rows = {"idx": list(range(100, 111)), "text_a": [a for a, _ in pairs], "text_b": [b for _, b in pairs],
            "label": [0] * 11}
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    outs, teardown_abort = {}, False
    for nproc in (2, 1):
        out = tmp_path / f"{nproc}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29700 + nproc + os.getpid() % 200), str(WORKER), str(run.path), str(tmp_path / "rows.json"),
               str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode and nproc == 2 and finished_then_aborted(out, proc.stderr):
            teardown_abort = True  # known, outside sftune (below); the output is still checked
        else:
            # On failure, also which outputs exist: did the workers finish (N.json) and leave the group (.left)?
            assert proc.returncode == 0, (sorted(p.name for p in tmp_path.iterdir()), proc.stderr[-3000:])
        outs[nproc] = json.loads(out.read_text())
        if nproc == 2:  # each rank left the process group before exiting
            assert [json.loads(Path(f"{out}.rank{r}.left").read_text()) for r in range(2)] == [True, True]
    assert outs[2]["processes"] == 2 and outs[1]["processes"] == 1
    assert outs[2]["idx"] == outs[1]["idx"] == rows["idx"]
    assert torch.allclose(torch.tensor(outs[2]["probabilities"]), torch.tensor(outs[1]["probabilities"]), atol=1e-5)
    if teardown_abort:
        pytest.xfail("the output is right, but a rank aborted in the interpreter's teardown after leaving the process "
                     "group ('terminate called without an active exception': a native thread at finalisation, "
                     "pytorch/pytorch#190489); about 1 run in 10 on this machine")


def finished_then_aborted(out: Path, stderr: str) -> bool:
    """Every rank wrote its output and left the process group, and then one aborted in teardown."""
    left = [Path(f"{out}.rank{r}.left") for r in range(2)]
    return (out.is_file() and all(p.is_file() and json.loads(p.read_text()) for p in left)
            and "terminate called without an active exception" in stderr)
