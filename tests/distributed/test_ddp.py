"""Two CPU processes (gloo) select the same subnetwork at every step, and end within tolerance of one process
with the same global batch and seed (methods.md section 0; issue: multi-process training)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftune.registry import methods

WORKER = Path(__file__).with_name("worker.py")


def launch(nproc: int, model, glue, out: Path, names: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(29500 + nproc + os.getpid() % 500), str(WORKER), str(model), str(glue), str(out), ",".join(names)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tiny_bert, glue_dir, tmp_path_factory):
    if shutil.which("torchrun") is None and not hasattr(torch.distributed, "run"):
        pytest.skip("torch.distributed.run is not available")
    names = list(methods())
    root = tmp_path_factory.mktemp("ddp")
    launch(2, tiny_bert, glue_dir, root / "two", names)
    launch(1, tiny_bert, glue_dir, root / "one", names)
    return root, names


def read_hashes(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_every_rank_selects_the_same_masks_every_step(runs):
    root, names = runs
    for method in names:
        r0 = read_hashes(root / "two" / method / "rank0.jsonl")
        r1 = read_hashes(root / "two" / method / "rank1.jsonl")
        assert r0 == r1, method
        if hasattr(methods()[method], "select"):
            assert len(r0) == 4, method  # one record per optimizer step


def test_two_processes_match_one_process(runs, tiny_bert):
    root, names = runs
    for method in names:
        start = load_file(str(root / "one" / f"{method}.start.safetensors"))
        one = load_file(str(root / "one" / f"{method}.safetensors"))
        two = load_file(str(root / "two" / f"{method}.safetensors"))
        moved = sum(float((one[n] - start[n]).norm()) for n in one)
        gap = sum(float((one[n] - two[n]).norm()) for n in one)
        # Gradients of two half-batches all-reduced differ from one batch's in the last float bits. Most methods
        # shrug that off; exact weighted sampling does not (a draw near a cumulative-weight boundary flips to a
        # neighbour), so Stochastic Tuning gets a looser bound. Its ranks still agree exactly (test above).
        tolerance = 0.25 if method == "stochastic" else 0.05
        assert gap <= tolerance * moved + 1e-6, (method, gap, moved)
        single = read_hashes(root / "one" / method / "rank0.jsonl")
        double = read_hashes(root / "two" / method / "rank0.jsonl")
        if method in ("child-tuning-d", "random", "child-tuning-f"):  # masks that do not depend on float noise
            assert single == double, method
