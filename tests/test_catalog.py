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


def test_presets_show_prints_a_preset_file_that_preset_reads_back(cli, tmp_path):
    from sftune.presets import all_presets, load_preset

    for name in all_presets():
        original = load_preset(name)
        code, stdout, _ = cli("presets", "show", name)
        assert code == 0
        (tmp_path / f"{name}.yaml").write_text(stdout)
        copy = load_preset(str(tmp_path / f"{name}.yaml"))
        for task in original.tasks or ["rte"]:
            assert copy.for_task(task) == original.for_task(task), (name, task)
        code, stdout, _ = cli("presets", "show", name, "--task", "rte")
        assert code == 0 and stdout.startswith(f"# preset {name} (")
        (tmp_path / f"{name}-rte.yaml").write_text(stdout)
        resolved = load_preset(str(tmp_path / f"{name}-rte.yaml"))
        assert resolved.for_task("rte") == original.for_task("rte") and not resolved.tasks, name


def test_presets_cp_copies_and_refuses_to_overwrite(cli, tmp_path):
    from sftune.presets import load_preset

    target = tmp_path / "mine.yaml"
    code, stdout, _ = cli("presets", "cp", "roberta", target)
    assert code == 0 and "--preset" in stdout
    assert target.read_text() == load_preset("roberta").path.read_text()  # comments and all
    code, _, stderr = cli("presets", "cp", "roberta", target)
    assert code == 2 and "--force" in stderr
    assert cli("presets", "cp", "roberta", target, "--task", "mrpc", "--force")[0] == 0
    assert load_preset(str(target)).for_task("mrpc")["train"]["max_steps"] == 2296
    code, _, stderr = cli("presets", "cp", "roberta", tmp_path / "mine.txt")
    assert code == 2 and ".yaml" in stderr


def test_help_lists_commands_in_order_shows_flags_as_flags_and_ends_with_examples(cli):
    from sftune import __version__

    code, stdout, _ = cli("--version")
    assert code == 0 and stdout.strip() == f"sftune {__version__}"
    code, stdout, _ = cli("--help")
    order = ["train", "eval", "sweep", "analyze", "plot", "transfer", "memprofile", "methods", "presets"]
    positions = [stdout.index(f"│ {name} ") for name in order]
    assert positions == sorted(positions), stdout
    for command in (["train"], ["eval"], ["sweep"], ["analyze"], ["plot"], ["transfer"], ["memprofile"],
                    ["methods"], ["presets"], ["presets", "ls"], ["presets", "show"], ["presets", "cp"]):
        code, stdout, _ = cli(*command, "--help")
        assert code == 0
        tail = stdout.rstrip().split("Examples:")[-1]
        assert "Examples:" in stdout and f"sftune {command[0]}" in tail and "╰" not in tail, command
        assert "<bool>" not in stdout, command
