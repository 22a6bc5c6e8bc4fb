import json

from sftune.registry import methods


def test_methods_lists_the_registry(cli):
    code, stdout, _ = cli("methods", "--format", "json")
    assert code == 0
    assert [m["name"] for m in json.loads(stdout) if m["kind"] == "method"] == list(methods())
    assert {"full", "frozen", "bitfit"} <= set(methods())


def test_presets_ls_and_show(cli):
    code, stdout, _ = cli("presets", "ls", "--format", "json")
    assert code == 0 and "roberta" in {p["name"] for p in json.loads(stdout)}
    code, stdout, _ = cli("presets", "show", "roberta", "--task", "mrpc", "--format", "json")
    assert code == 0 and json.loads(stdout)["train"]["max_steps"] == 2296


def test_train_help_lists_methods_from_the_registry(cli):
    code, stdout, _ = cli("train", "--help")
    assert code == 0
    for name in methods():
        assert name in stdout
