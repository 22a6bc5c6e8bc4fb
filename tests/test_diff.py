"""The sparse diff artifact: only changed entries, smaller than the weights, and base + diff = the model."""

import json

import torch
from safetensors.torch import load_file


def test_bitfit_diff_rebuilds_the_model(cli, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "run"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", "bitfit", "--max-steps", "3",
                          "--batch-size", "8", "--set", "data.train_size=24", "--set", "train.lr=1e-3",
                          "--set", "data.eval_batch_size=128", "-o", out)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    summary = json.loads((out / "diff.json").read_text())
    assert summary["diff_bytes"] < summary["full_weights_bytes"] / 5
    groups = results["sparsity"]["groups"]
    assert groups["attention"]["changed"] == 0 and groups["bias"]["changed"] > 0 and groups["head"]["share"] == 1.0
    diff = load_file(str(out / "diff.safetensors"))
    names = {k.split("::")[0] for k in diff}
    assert all(n.endswith("bias") or n.startswith("classifier.") for n in names)
    code, stdout, _ = cli("eval", out, "rte", "--from-diff", "--format", "json", "-o", tmp_path / "e")
    assert code == 0
    assert json.loads(stdout)["metrics"] == results["metrics"]


def test_apply_diff_by_hand(tmp_path):
    from torch import nn

    from sftune.diff import apply_diff, save_diff

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        model[0].weight[1, 2] += 1.0
    save_diff(model, reference, {"0.weight": "ffn", "0.bias": "bias"}, tmp_path)
    diff = load_file(str(tmp_path / "diff.safetensors"))
    assert diff["0.weight::indices"].tolist() == [6] and "0.bias::indices" not in diff
    fresh = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        fresh[0].weight.copy_(reference["0.weight"])
        fresh[0].bias.copy_(reference["0.bias"])
    apply_diff(fresh, tmp_path / "diff.safetensors")
    assert torch.equal(fresh[0].weight, model[0].weight)
