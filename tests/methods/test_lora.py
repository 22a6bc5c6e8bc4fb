"""LoRA and DoRA through peft: default targets by structure, adapter sizes counted by hand, training on a toy
task, merged model = adapted model, the adapter's save/load round trip, and the run directory of a CLI run
(adapter/, eval, resume) on tiny config-built BERT, Llama and GPT-2."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("peft")

from sftune.methods.base import RunContext  # noqa: E402
from sftune.methods.lora import Dora, Lora, LoraOptions, adapter_entries, load_adapter, lora_targets  # noqa: E402
from sftune.models import group_of_params, head_prefixes  # noqa: E402

H, MLP, KV_HEADS, HEADS, R = 16, 24, 1, 2, 4  # hidden, MLP width, key/value heads, heads, rank


def tiny(family: str, seed: int = 0):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    common = dict(vocab_size=64, num_labels=2, pad_token_id=0)
    if family == "bert":
        config = AutoConfig.for_model("bert", hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS,
                                      intermediate_size=MLP, max_position_embeddings=32, **common)
    elif family == "llama":
        config = AutoConfig.for_model("llama", hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS,
                                      num_key_value_heads=KV_HEADS, intermediate_size=MLP,
                                      max_position_embeddings=32, **common)
    else:
        config = AutoConfig.for_model("gpt2", n_embd=H, n_layer=2, n_head=HEADS, n_inner=MLP, n_positions=32,
                                      bos_token_id=1, eos_token_id=1, **common)
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


def adapt(model, method_cls=Lora, **options):
    """The method set up on `model` as the training loop does (setup, then the trainable votes)."""
    method = method_cls(method_cls.Options(**options))
    ctx = RunContext(model=model, task=None, config=SimpleNamespace(train=SimpleNamespace(seed=0)),
                     accelerator=None, train_loader=None, total_steps=1, groups=group_of_params(model),
                     head=head_prefixes(model))
    method.setup(ctx)
    for name, p in model.named_parameters():
        p.requires_grad_(method.trainable(name, p))
    return method


def batch(n=16, length=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids[:, 0] < 32).long()}


def test_default_targets_are_the_layers_projections():
    bert = [n.split("layer.0.")[1] for n in lora_targets(tiny("bert")) if ".layer.0." in n]
    assert bert == ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "intermediate.dense", "output.dense"]
    llama = [n.split("layers.0.")[1] for n in lora_targets(tiny("llama")) if ".layers.0." in n]
    assert llama == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    gpt2 = lora_targets(tiny("gpt2"))
    assert [n.split("h.1.")[1] for n in gpt2 if ".h.1." in n] == ["attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                  "mlp.c_proj"]
    for targets in (gpt2, lora_targets(tiny("bert"))):  # never the pooler, the head or embeddings
        assert len(targets) in (8, 12) and not any("pooler" in n or "classifier" in n or "score" in n
                                                   or "embed" in n for n in targets)


def test_adapter_entries_counted_by_hand():
    head_dim = H // HEADS
    kv = KV_HEADS * head_dim
    # Llama per layer: q (H->H), k and v (H->kv), o (H->H), gate and up (H->MLP), down (MLP->H); A is r x in, B out x r
    per_layer = R * ((H + H) + 2 * (H + kv) + (H + H) + 2 * (H + MLP) + (MLP + H))
    magnitudes = H + 2 * kv + H + 2 * MLP + H  # DoRA: one per output row
    model = tiny("llama")
    assert adapter_entries(model, R) == 2 * per_layer
    assert adapter_entries(model, R, dora=True) == 2 * (per_layer + magnitudes)
    assert adapter_entries(model, R, targets=["q_proj", "v_proj"]) == 2 * R * ((H + H) + (H + kv))
    # GPT-2: c_attn H->3H, attn c_proj H->H, c_fc H->MLP, mlp c_proj MLP->H (Conv1D weights are in x out)
    assert adapter_entries(tiny("gpt2"), R) == 2 * R * ((H + 3 * H) + (H + H) + (H + MLP) + (MLP + H))
    # ... and peft creates exactly that many adapter entries; only they and the head train.
    for family in ("llama", "gpt2"):
        for cls, dora in ((Lora, False), (Dora, True)):
            model = tiny(family)
            method = adapt(model, cls, rank=R)
            made = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
            head = sum(p.numel() for n, p in model.named_parameters() if "modules_to_save" in n)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            assert made == method.entries == adapter_entries(tiny(family), R, dora=dora)
            assert trainable == made + head and head == H * 2  # the score head: H x 2 labels, no bias


@pytest.mark.parametrize("family,cls", [("bert", Lora), ("llama", Lora), ("gpt2", Lora), ("llama", Dora)])
def test_trains_the_adapters_and_head_only(family, cls):
    model = tiny(family)
    adapt(model, cls, rank=R, dropout=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    data = batch()
    model.eval()  # no dropout: a deterministic toy fit
    losses = []
    for _ in range(25):
        loss = model(**data).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.75 * losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n or "modules_to_save" in n for n in changed)
    assert any("lora_B" in n for n in changed)  # B starts at zero: the adapters did learn


def _randomise_adapters(model):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n or "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("family,cls", [("bert", Lora), ("llama", Lora), ("gpt2", Lora), ("llama", Dora),
                                        ("gpt2", Dora)])
def test_merged_model_and_reloaded_adapter_equal_the_adapted_model(family, cls, tmp_path):
    model = tiny(family)
    method = adapt(model, cls, rank=R)
    model.eval()  # after setup: peft's adapter dropout modules are created in training mode
    _randomise_adapters(model)
    data = batch(n=4)
    data.pop("labels")
    with torch.no_grad():
        adapted = model(**data).logits
    merged, write_model = method.export(tmp_path, tokenizer=None)
    assert merged is model and write_model is False
    assert not any(".lora_" in n or "base_layer" in n for n, _ in merged.named_parameters())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    with torch.no_grad():
        torch.testing.assert_close(merged(**data).logits, adapted, rtol=1e-5, atol=1e-5)
    # peft's own loader on a fresh base model (its head initialised from another seed: the adapter brings it)
    fresh = tiny(family, seed=0)
    head = fresh.score if hasattr(fresh, "score") else fresh.classifier
    torch.nn.init.normal_(head.weight)
    reloaded = load_adapter(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**data).logits, adapted, rtol=1e-5, atol=1e-5)


def test_trainable_table_counts_the_head_once():
    """peft's modules_to_save keeps the head twice (classifier.original_module, frozen, and
    classifier.modules_to_save.default, trained): the table and the sparsity totals count the trained copy only."""
    from sftune.engine.sparsity import SparsityMeter
    from sftune.models import trainable_table

    base_total = sum(p.numel() for p in tiny("bert").parameters())
    head = H * 2 + 2  # BERT's classifier: H x 2 labels and 2 biases
    model = tiny("bert")
    method = adapt(model, rank=R)
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith("classifier.")) == 2 * head  # the copy
    table = trainable_table(model)
    assert table["head"] == {"total": head, "trainable": head}
    assert table["all"] == {"total": base_total + method.entries, "trainable": method.entries + head}
    meter = SparsityMeter(model, group_of_params(model))
    assert meter.totals["head"] == head and meter.total == base_total + method.entries


def test_bad_targets_and_missing_modules_are_one_line_errors():
    from sftune.errors import UsageError

    with pytest.raises(UsageError, match="no module of BertForSequenceClassification matches q_proj"):
        adapt(tiny("bert"), targets=["q_proj"])
    with pytest.raises(UsageError, match="lora.rank must be at least 1, got 0"):
        adapt(tiny("bert"), rank=0)
    assert LoraOptions().rank == 8 and Dora.Options().use_dora


# ------------------------------------------------------------------------------------------ the CLI
FAST = ("--max-steps", "4", "--batch-size", "8", "--set", "data.train_size=24", "--set", "data.eval_batch_size=128",
        "--lr", "1e-3")


def test_cli_run_writes_the_adapter_and_eval_reproduces_it(cli, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "lora"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", "lora", *FAST,
                          "--set", "method.rank=2", "-o", out)
    assert code == 0, stderr
    assert not (out / "model").exists()  # no merged copy unless asked
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["peft_type"] == "LORA" and config["modules_to_save"] == ["classifier"]
    results = json.loads((out / "results.json").read_text())
    head = results["trainable"]["head"]["trainable"]
    assert results["trainable"]["all"]["trainable"] == results["adapter"]["entries"] + head
    assert results["adapter"]["entries"] == adapter_entries(tiny_bert_model(tiny_bert), 2)
    # The merged weights differ from the pre-trained ones only in the targeted matrices and the head.
    changed = {g for g, v in results["sparsity"]["groups"].items() if v["changed"]}
    assert changed <= {"attention", "ffn", "head"} and "head" in changed
    code, stdout, stderr = cli("eval", out, "rte", "--format", "json")
    assert code == 0, stderr
    assert json.loads(stdout)["metrics"] == results["metrics"]

    merged = tmp_path / "merged"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", "lora", *FAST,
                          "--set", "method.rank=2", "--set", "method.merge=true", "-o", merged)
    assert code == 0, stderr
    assert (merged / "model" / "model.safetensors").is_file() and (merged / "adapter").is_dir()
    code, stdout, _ = cli("eval", merged, "rte", "--format", "json")
    assert code == 0 and json.loads(stdout)["metrics"] == results["metrics"]  # same seed: same training


def tiny_bert_model(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)


def test_cli_dora_run_resumes_to_the_same_adapter(cli, tiny_bert, glue_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from sftune.engine import loop

    args = ("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", "dora", *FAST,
            "--set", "train.save_every=1")
    straight = tmp_path / "straight"
    assert cli(*args, "-o", straight)[0] == 0
    original = loop.Trainer._after_optimizer_step

    def stop_at_two(self, window):
        original(self, window)
        if self.state.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", stop_at_two)
    resumed = tmp_path / "resumed"
    assert cli(*args, "-o", resumed)[0] == 130
    monkeypatch.setattr(loop.Trainer, "_after_optimizer_step", original)
    code, _, stderr = cli(*args, "-o", resumed, "--resume")
    assert code == 0, stderr
    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any("magnitude" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sparse_methods_take_loras_budget(cli, tiny_bert, glue_dir, tmp_path):
    """method.lora_rank gives Random/Top/Stochastic k = LoRA's adapter entries on the same model, and a sweep
    passes method.rank to lora only and method.lora_rank to the sparse methods only."""
    out = tmp_path / "random"
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", "random", "--max-steps", "1",
                          "--batch-size", "4", "--set", "data.train_size=8", "--set", "data.eval_batch_size=128",
                          "--set", "method.lora_rank=2", "--set", "train.log_every=1", "-o", out)
    assert code == 0, stderr
    record = next(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x)
    assert record["budget_k"] == adapter_entries(tiny_bert_model(tiny_bert), 2) > 0
    code, stdout, stderr = cli("sweep", tiny_bert, "rte", "--method", "lora,stochastic", "--set", "method.rank=2",
                               "--set", "method.lora_rank=2", "--seeds", "1", "--dry-run", "-o", tmp_path / "sw")
    assert code == 0, stderr
    code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--method", "top", "--set",
                          "method.lora_rank=2", "--set", "method.k=5", "--dry-run", "-o", tmp_path / "x")
    assert code == 2 and "set one of method.k, method.density and method.lora_rank" in stderr


# ------------------------------------------------------------------------------------- memory estimate
def test_estimate_of_lora_counted_by_hand():
    """--estimate on a tiny Llama: weights, gradients and AdamW state of full and LoRA from the config's sizes."""
    from sftune.profile.common import Cell
    from sftune.profile.estimate import estimate_cell

    config = tiny("llama").config
    V, L, kv, labels = 64, 2, KV_HEADS * (H // HEADS), 2
    per_layer = H * H + 2 * H * kv + H * H + 3 * H * MLP + 2 * H  # q, k, v, o, gate/up/down, two RMSNorms
    base = V * H + L * per_layer + H + H * labels  # embeddings, layers, final norm, score head (no bias)
    adapters = L * R * ((H + H) + 2 * (H + kv) + (H + H) + 2 * (H + MLP) + (MLP + H))
    buffers = 2 * 4 * (H // HEADS // 2)  # rotary inv_freq and original_inv_freq: head_dim / 2 floats each
    cells = {m: estimate_cell(Cell(model="tiny-llama", task="sst2", method=m, batch_size=2, seq_len=8,
                                   sets={"method.rank": str(R)} if m == "lora" else {}), config)
             for m in ("full", "lora")}
    full, lora = cells["full"]["parts_max"], cells["lora"]["parts_max"]
    assert full["weights"] == 4 * base + buffers and full["gradients"] == 4 * base
    assert full["optimizer"] == 2 * 4 * base
    head_copy = H * labels  # peft's modules_to_save: the trained copy beside the original head
    assert lora["weights"] == 4 * (base + adapters + head_copy) + buffers
    assert lora["gradients"] == 4 * (adapters + head_copy) and lora["optimizer"] == 2 * 4 * (adapters + head_copy)
    assert cells["lora"]["trainable"] == adapters + head_copy and lora["method_state"] == 0


def test_measured_lora_profile_matches_the_estimate(tiny_bert):
    """sftune memprofile runs LoRA cells; the measured weights, gradients and AdamW state equal the estimate's
    counts and the meta forward's saved tensors (adapter dropout copies included) match the real ones."""
    from typer.testing import CliRunner

    from sftune.cli import app, quiet_libraries
    from sftune.profile.common import Cell
    from sftune.profile.estimate import estimate

    quiet_libraries()
    result = CliRunner().invoke(app, ["memprofile", str(tiny_bert), "rte", "--methods", "lora", "--batch-sizes", "2",
                                      "--seq-len", "16", "--steps", "2", "--cpu", "--format", "json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    (cell,) = json.loads(result.stdout)["cells"]
    assert cell["status"] == "ok", cell
    (est,) = estimate([Cell(model=str(tiny_bert), task="rte", method="lora", batch_size=2, seq_len=16, steps=2)])
    got, want = cell["parts_max"], est["parts_max"]
    assert got["weights"] == want["weights"] and got["gradients"] == want["gradients"]
    assert want["optimizer"] <= got["optimizer"] <= want["optimizer"] * 1.01  # AdamW's step scalars
    assert abs(got["activations"] - want["activations"]) <= 0.02 * got["activations"]
    assert 0 < cell["trainable"] == est["trainable"] < cell["params"] / 4


def test_transfer_evaluates_a_lora_run_from_its_adapter(cli, tiny_bert, glue_dir, tmp_path):
    from test_transfer import write_stand_in

    train = tmp_path / "nli3.tsv"
    write_stand_in(glue_dir, train, slice(0, 32))
    out = tmp_path / "run"
    code, stdout, stderr = cli("transfer", tiny_bert, "--source", "mnli", "--targets", "rte", "--train-file", train,
                               "--validation-file", train, "--data-dir", glue_dir, "--method", "lora", "--max-steps",
                               "2", "--batch-size", "8", "--set", "data.eval_batch_size=256", "-o", out,
                               "--format", "json")
    assert code == 0, stderr
    assert not (out / "model").exists() and (out / "adapter").is_dir()
    first = json.loads(stdout)["metrics"]["rte/accuracy"]
    code, stdout, stderr = cli("transfer", out, "--targets", "rte", "-o", tmp_path / "again", "--format", "json")
    assert code == 0, stderr
    assert json.loads(stdout)["metrics"]["rte/accuracy"] == first


@pytest.mark.parametrize("method", ["full", "lora"])
def test_meta_forward_saves_what_the_cpu_forward_saves_on_a_decoder(method):
    """The estimate's meta forward counts attention as the fused kernel a real causal decoder forward runs (no
    B x H x L x L probabilities), with and without LoRA's adapter-dropout copies."""
    from sftune.profile.estimate import activation_bytes, meta_batch, meta_model

    real = tiny("llama")
    meta = meta_model(real.config)
    for model in (real, meta):
        if method == "lora":
            adapt(model, rank=R)
        else:
            model.requires_grad_(True)
    length = 32
    batch = meta_batch(real.config, 4, length)
    real_batch = {"input_ids": torch.randint(1, 64, (4, length)), "labels": torch.zeros(4, dtype=torch.long)}
    want = activation_bytes(real, real_batch)
    got = activation_bytes(meta, batch)
    probabilities = 2 * 4 * HEADS * length * length * 4  # two layers' softmax outputs, float32
    assert abs(got - want) <= 0.02 * want and want > 0
    assert probabilities > 0.1 * want  # the math path's probabilities would be far outside the tolerance


def test_building_an_adapter_raises_no_library_deprecation_warning():
    """peft reads transformers' deprecated `is_gradient_checkpointing`: a FutureWarning on every LoRA run that
    the user cannot act on. sftune silences that one message, and only around peft's calls."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapt(tiny("llama"), rank=R)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    with pytest.warns(FutureWarning, match="is_gradient_checkpointing"):  # still raised outside peft's calls
        tiny("llama").is_gradient_checkpointing
