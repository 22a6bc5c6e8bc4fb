import pytest

from sftune.config import build, coerce, deep_merge, parse_set, set_dotted
from sftune.errors import UsageError
from sftune.presets import all_presets, load_preset


def tree(**extra):
    t = {"model": {"name": "m"}, "task": "rte", "method": {"name": "full"}}
    for k, v in extra.items():
        set_dotted(t, k, v)
    return t


def test_defaults_and_coercion_from_strings():
    cfg = build(tree(**{"train.lr": "2e-5", "train.max_steps": "30", "data.stratified": "true"}))
    assert cfg.train.lr == 2e-5 and cfg.train.max_steps == 30 and cfg.data.stratified is True
    assert cfg.train.weight_decay == 0.01 and cfg.train.max_grad_norm == 1.0 and cfg.data.max_length == 128
    assert (cfg.method.name, cfg.method.mask_mode) == ("full", "grad")
    assert cfg.to_dict()["method"] == {"name": "full", "mask_mode": "grad"}


def test_all_errors_reported_at_once_with_did_you_mean():
    with pytest.raises(UsageError) as e:
        build(tree(**{"train.lrr": "1", "train.batch_size": "x", "data.max_lenght": "3"}))
    msg = str(e.value)
    assert "train.lrr" in msg and "Did you mean 'train.lr'" in msg
    assert "train.batch_size: expected an integer" in msg
    assert "Did you mean 'data.max_length'" in msg
    assert "\n" not in msg


def test_unknown_method_and_mask_mode():
    with pytest.raises(UsageError, match="Did you mean 'bitfit'"):
        build(tree(**{"method.name": "bitfti"}))
    with pytest.raises(UsageError, match="expected grad or update"):
        build(tree(**{"method.mask_mode": "both"}))


def test_unknown_method_option_names_the_methods_options():
    with pytest.raises(UsageError, match="unknown key 'method.p' for method full"):
        build(tree(**{"method.p": "0.3"}))


def test_batch_must_divide_by_accumulation():
    with pytest.raises(UsageError, match="divisible"):
        build(tree(**{"train.batch_size": "16", "train.grad_accum": "3"}))


def test_parse_set_rejects_items_without_equals():
    assert parse_set(["a.b=1", "c.d = x"]) == {"a.b": "1", "c.d": "x"}
    with pytest.raises(UsageError, match="expected key=value"):
        parse_set(["train.lr"])


@pytest.mark.parametrize("value,ann,expected", [("none", int | None, None), ("1_000", int, 1000),
                                                 ("a,b", list[str], ["a", "b"]), ("off", bool, False)])
def test_coerce(value, ann, expected):
    assert coerce(value, ann) == expected


def test_every_shipped_preset_builds_for_every_task_it_names():
    from sftune.tasks import TASKS

    presets = all_presets()
    assert {"bert", "roberta", "electra", "bart", "deberta", "stochastic-tuning", "dps", "child-tuning",
            "bitfit"} <= set(presets)
    for name in presets:
        preset = load_preset(name)
        for task in preset.tasks or ["rte"]:
            assert task in TASKS
            for method in ["full", *preset.methods]:
                t = deep_merge({"model": {"name": "m"}, "task": task, "method": {"name": method}},
                               preset.for_task(task, method))
                t.pop("regs", None)  # regularisers are validated where they are applied
                build(t)


def test_roberta_preset_values_match_the_paper_table():
    rte = load_preset("roberta").for_task("rte")["train"]
    assert (rte["lr"], rte["max_steps"], rte["warmup_steps"], rte["batch_size"]) == (2e-5, 2036, 122, 16)
    cola = load_preset("roberta").for_task("cola")["train"]
    assert (cola["lr"], cola["max_steps"], cola["warmup_steps"]) == (1e-5, 5336, 320)


def test_malformed_preset_yaml_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("config: {train: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML at line"):
        load_preset(str(bad))


def test_preset_cannot_execute_python(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("config: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(UsageError):
        load_preset(str(evil))


def test_causal_lm_tasks_default_to_a_longer_max_length_unless_set():
    # 128 tokens cut most GSM8K rows; a causal-LM task gets 384 when nothing sets data.max_length.
    assert build({"model": {"name": "m"}, "task": "gsm8k"}).data.max_length == 384
    assert build({"model": {"name": "m"}, "task": "instruct"}).data.max_length == 384
    assert build({"model": {"name": "m"}, "task": "gsm8k", "data": {"max_length": 200}}).data.max_length == 200
    assert build({"model": {"name": "m"}, "task": "rte"}).data.max_length == 128
    resolved = build({"model": {"name": "m"}, "task": "gsm8k"}).to_dict()
    assert build(resolved).data.max_length == 384  # config.yaml records it: a resume reads the same value
