"""What a completed run keeps: checkpoint/ only on request, weights as train.keep_weights says, the same file
mode for every file; `eval --from-diff` in a folder of its own that records its source."""

import json
import os
import stat

import pytest

FAST = ("--method", "bitfit", "--max-steps", "3", "--batch-size", "8", "--set", "data.train_size=24",
        "--set", "train.eval_every=2", "--set", "data.eval_batch_size=128", "--set", "train.lr=1e-3")


def modes(root):
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_completed_run_drops_checkpoint_and_files_share_one_mode(cli, tiny_bert, glue_dir, tmp_path):
    out, kept = tmp_path / "run", tmp_path / "kept"
    assert cli("train", tiny_bert, "rte", "--data-dir", glue_dir, *FAST, "-o", out)[0] == 0
    assert not (out / "checkpoint").exists() and (out / "model" / "model.safetensors").is_file()
    umask = os.umask(0)
    os.umask(umask)
    found = modes(out)
    assert "diff.safetensors" in found and set(found.values()) == {0o666 & ~umask}, found
    assert cli("train", tiny_bert, "rte", "--data-dir", glue_dir, *FAST, "--keep-checkpoint", "-o", kept)[0] == 0
    assert (kept / "checkpoint" / "trainer_state.json").is_file()
    assert stat.S_IMODE((kept / "checkpoint" / "model.safetensors").stat().st_mode) == 0o666 & ~umask

    # eval --from-diff: its own folder, its source recorded; the plain eval keeps eval-rte/.
    code, stdout, _ = cli("eval", out, "rte", "--from-diff", "--format", "json")
    doc = json.loads(stdout)
    assert code == 0 and doc["output_dir"] == str(out / "eval-rte-from-diff")
    assert doc["source"] == {"weights": str(out / "diff.safetensors"), "base_model": str(tiny_bert), "from_diff": True}
    assert json.loads((out / "eval-rte-from-diff" / "metrics.json").read_text())["source"]["from_diff"] is True
    code, stdout, _ = cli("eval", out, "rte", "--format", "json")
    assert code == 0 and json.loads(stdout)["source"] == {"weights": str(out / "model"), "from_diff": False}
    assert (out / "eval-rte" / "metrics.json").is_file()


@pytest.mark.parametrize("keep", ["diff", "none"])
def test_keep_weights(cli, tiny_bert, glue_dir, tmp_path, keep):
    out = tmp_path / keep
    assert cli("train", tiny_bert, "rte", "--data-dir", glue_dir, *FAST, "--set", f"train.keep_weights={keep}",
               "-o", out)[0] == 0
    results = json.loads((out / "results.json").read_text())
    assert results["weights"] == keep and not (out / "model").exists()
    assert (out / "diff.safetensors").exists() == (keep == "diff")
    assert (out / "predictions" / "validation.jsonl").is_file()
    code, stdout, stderr = cli("eval", out, "rte", "--format", "json")
    if keep == "diff":  # evaluated from the diff without asking, with the run's own metrics
        assert code == 0 and json.loads(stdout)["metrics"] == results["metrics"]
    else:
        assert code == 2 and "kept no weights" in stderr
