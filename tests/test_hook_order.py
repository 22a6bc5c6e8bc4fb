"""The order of every hook call a run makes, pinned with a recording method and a recording regulariser:
4 optimizer steps of 2 micro-batches each, an evaluation and a checkpoint after step 2, logs at steps 2 and 4."""

from __future__ import annotations

import pytest

from sftune import registry
from sftune.artifacts import RunDir
from sftune.config import build
from sftune.engine.loop import Reporter
from sftune.methods.base import Method, Regularizer
from sftune.run import train_run


def _recording(cls_name: str, base: type, name: str, calls: list) -> type:
    """A plug-in that appends (its name, the hook, the step or optimizer) to `calls` and changes nothing."""

    def rec(hook, arg=None):
        calls.append((name, hook, arg))

    class Recorder(base):
        def setup(self, ctx):
            super().setup(ctx)
            rec("setup")

        def after_setup(self):
            rec("after_setup")

        def trainable(self, param_name, param):
            rec("trainable", param_name)
            return None

        def param_groups(self, groups):
            rec("param_groups")
            return groups

        def on_optimizer(self, optimizer):
            rec("on_optimizer", id(optimizer))

        def before_forward(self, step):
            rec("before_forward", step)

        def extra_loss(self, model, batch, outputs):
            rec("extra_loss")
            return None

        def after_backward(self, step):
            rec("after_backward", step)

        def after_clip(self, step):
            rec("after_clip", step)

        def optimizer_step(self, optimizer):
            rec("optimizer_step", id(optimizer))
            return False

        def after_step(self, step):
            rec("after_step", step)

        def eval_mode(self):
            rec("eval_mode")

        def train_mode(self):
            rec("train_mode")

        def stats(self):
            rec("stats")
            return {}

        def state_dict(self):
            rec("state_dict")
            return {}

        def initial_weights(self):
            rec("initial_weights")
            return {}

        def summary_stats(self):
            rec("summary_stats")
            return {}

    Recorder.__name__ = Recorder.__qualname__ = cls_name
    Recorder.name, Recorder.summary = name, f"records hook calls ({cls_name})"
    return Recorder


@pytest.fixture
def calls():
    calls: list = []
    method = _recording("RecordingMethod", Method, "test-recorder", calls)

    def selected_counts(self):
        calls.append(("test-recorder", "selected_counts", None))
        return None

    def export(self, run_path, tokenizer):
        calls.append(("test-recorder", "export", None))
        return None

    method.selected_counts, method.export = selected_counts, export
    reg = _recording("RecordingReg", Regularizer, "test-recorder-reg", calls)
    registry.register(method)
    registry.register_regularizer(reg)
    try:
        yield calls
    finally:
        del registry._METHODS[method.name], registry._REGULARIZERS[reg.name]


def test_every_hook_is_called_in_order(calls, tiny_bert, glue_dir, tmp_path):
    tree = {"model": {"name": str(tiny_bert)}, "task": "rte", "method": {"name": "test-recorder"},
            "regs": [{"name": "test-recorder-reg"}],
            "data": {"data_dir": str(glue_dir), "train_size": 64, "eval_batch_size": 128, "max_length": 32},
            "train": {"max_steps": 4, "batch_size": 8, "grad_accum": 2, "eval_every": 2, "log_every": 2,
                      "save_minutes": 0, "keep_weights": "none"}}
    results = train_run(build(tree), RunDir(tmp_path / "run"), Reporter())
    assert results["status"] == "complete" and results["steps"] == 4

    method = [(h, a) for n, h, a in calls if n == "test-recorder"]
    reg = [(h, a) for n, h, a in calls if n == "test-recorder-reg"]
    hooks = [h for h, _ in method]
    n_params = sum(1 for h in hooks if h == "trainable")
    assert n_params > 10
    step = [*["before_forward", "extra_loss"] * 2, "after_backward", "after_clip", "optimizer_step", "after_step"]
    expected = ["setup", "after_setup", *["trainable"] * n_params, "param_groups", "on_optimizer",
                *step, *step, "selected_counts", "stats", "eval_mode", "train_mode", "state_dict",  # step 2
                *step, *step, "selected_counts", "stats", "eval_mode", "train_mode",  # step 4, final evaluation
                "export", "initial_weights", "summary_stats"]
    assert hooks == expected
    # The regulariser sees the same hooks (it is not asked for the method-only ones), each right after the method.
    method_only = {"selected_counts", "export"}
    assert [h for h, _ in reg] == [h for h in expected if h not in method_only]
    pairs = [(n, h) for n, h, _ in calls if h not in method_only]
    assert pairs == [(n, h) for h in [h for h in expected if h not in method_only]
                     for n in ("test-recorder", "test-recorder-reg")]

    # Steps are 1-based optimizer steps, the same for both micro-batches of a step.
    assert [a for h, a in method if h == "before_forward"] == [1, 1, 2, 2, 3, 3, 4, 4]
    for hook in ("after_backward", "after_clip", "after_step"):
        assert [a for h, a in method if h == hook] == [1, 2, 3, 4], hook
    # on_optimizer and optimizer_step get the same object (the one the loop steps).
    optimizers = {a for h, a in method + reg if h in ("on_optimizer", "optimizer_step")}
    assert len(optimizers) == 1
