"""Bad input: one line on stderr naming the input and what to do, exit code 2, no traceback, nothing lost."""

import pytest


def check(result, *fragments):
    code, stdout, stderr = result
    assert code == 2, (stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_task(cli):
    check(cli("train", "minilm", "nosuchtask"), "unknown task 'nosuchtask'", "rte")


def test_unknown_method_suggests(cli, tiny_bert):
    check(cli("train", tiny_bert, "rte", "--method", "bitfitt"), "unknown method 'bitfitt'", "Did you mean 'bitfit'")


def test_unknown_preset_suggests(cli, tiny_bert):
    check(cli("train", tiny_bert, "rte", "--preset", "robrta"), "unknown preset 'robrta'", "Did you mean 'roberta'")


def test_missing_model_path(cli, tmp_path):
    check(cli("train", str(tmp_path / "nope"), "rte", "--dry-run"), "does not exist")


def test_hub_model_offline_is_one_sentence(cli, glue_dir):
    check(cli("train", "roberta-base", "rte", "--data-dir", glue_dir, "--dry-run"), "cannot load model 'roberta-base'",
          "local directory")


def test_unknown_set_key_suggests(cli, tiny_bert):
    check(cli("train", tiny_bert, "rte", "--set", "train.learning_rate=1"), "unknown key 'train.learning_rate'")
    check(cli("train", tiny_bert, "rte", "--set", "trian.lr=1"), "unknown section 'trian'", "Did you mean 'train'")


def test_malformed_preset_file(cli, tiny_bert, tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("config:\n  train: {lr: [\n")
    check(cli("train", tiny_bert, "rte", "--preset", bad), "not valid YAML")


def test_missing_and_empty_data_files(cli, tiny_bert, tmp_path):
    check(cli("train", tiny_bert, "rte", "--train-file", tmp_path / "x.tsv", "--validation-file", tmp_path / "x.tsv",
              "-o", tmp_path / "r"), "does not exist")
    (tmp_path / "e.tsv").write_text("")
    check(cli("train", tiny_bert, "rte", "--train-file", tmp_path / "e.tsv", "--validation-file", tmp_path / "e.tsv",
              "-o", tmp_path / "r2"), "is empty")


def test_labels_outside_the_task(cli, tiny_bert, tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text("sentence1\tsentence2\tlabel\na\tb\tneutral\n")
    check(cli("train", tiny_bert, "rte", "--train-file", f, "--validation-file", f, "-o", tmp_path / "r"),
          "label 'neutral'", "rte")


def test_existing_run_directory_is_kept(cli, tiny_bert, glue_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    check(cli("train", tiny_bert, "rte", "--data-dir", glue_dir, "-o", out), "not empty", "--resume", "--overwrite")
    assert (out / "precious.txt").read_text() == "keep me"


def test_bad_input_with_overwrite_loses_nothing(cli, tiny_bert, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text('{"sftune_version": "0"}')  # an earlier run: --overwrite may replace it
    (out / "precious.txt").write_text("keep me")
    check(cli("train", tiny_bert, "rte", "--data-dir", tmp_path / "nodata", "--overwrite", "-o", out), "does not exist")
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("args,fragment", [(("methods", "--format", "xml"), "--format 'xml'"),
                                           (("presets", "show", "nope"), "unknown preset 'nope'")])
def test_catalog_errors(cli, args, fragment):
    check(cli(*args), fragment)


def test_console_script_exit_code(tmp_path):
    """The installed entry point, not just the in-process runner."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "sftune", "train", "minilm", "nosuchtask"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown task" in proc.stderr
