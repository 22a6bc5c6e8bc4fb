from rich.console import Console

from sftune.cli.render import PlainReporter, RichReporter

INFO = {"model": "m", "task": "rte", "method": "bitfit", "mask_mode": "grad", "n_train": 10, "total_steps": 4,
        "eval_splits": ["validation"], "main_metric": "accuracy", "log_every": 2,
        "trainable": {"all": {"total": 1000, "trainable": 1}, "bias": {"total": 10, "trainable": 1}}}
PER_STEP = {**INFO, "method": "stochastic", "selects_per_step": True,
            "trainable": {"all": {"total": 1000, "trainable": 400}}}
TRAIN = {"type": "train", "step": 2, "epoch": 0.5, "loss": 0.69, "lr": 1e-5, "examples_per_s": 12.5,
         "selected": 0.0012, "changed": 0.4}


def screen(console):
    return console.export_text(clear=True)


def test_live_display_shows_progress_rate_eta_metrics_and_evaluating():
    console = Console(record=True, force_terminal=True, width=200)
    r = RichReporter(console)
    r.start(INFO)
    r.step({"step": 1, "loss": 0.7, "lr": 2e-5})  # numbers from the first step, before any logged row
    r.live.refresh()
    first = screen(console)
    assert "1/4 steps" in first and "loss 0.7000 · lr 2.00e-05" in first and "ETA" in first
    r.step({"step": 2, "loss": 0.69, "lr": 1e-5})
    r.log(TRAIN)
    r.evaluating(2)
    assert "evaluating validation at step 2..." in screen(console)
    r.log({"type": "eval", "step": 2, "epoch": 0.5, "validation/accuracy": 0.61})
    r.finish({"metrics": {"validation": {"accuracy": 0.61}}, "run_dir": "x"})
    text = console.export_text()
    for fragment in ("2/4 steps", "step/s", "elapsed", "validation/accuracy 0.6100", "ex/s", "0.6900",
                     "1.00e-05", "trainable 1 (0.100%)", "selected %", "0.120", "40.000"):
        assert fragment in text, fragment


def test_header_of_a_per_step_method_names_candidates_and_the_per_step_share():
    console = Console(record=True, force_terminal=True, width=200)
    r = RichReporter(console)
    r.start(PER_STEP)
    r.live.refresh()
    assert "candidates 400 (40.000%) · updated per step: selected % (first logged at step 2)" in screen(console)
    r.log(TRAIN)
    r.live.refresh()
    text = screen(console)
    assert "candidates 400 (40.000%) · updated per step 0.120%" in text and "trainable 400" not in text
    r.finish({"metrics": {}, "run_dir": "x"})


def test_plain_lines_use_the_screens_units(capsys):
    import sys

    r = PlainReporter(sys.stdout)
    r.start({**PER_STEP, "total_steps": 10, "log_every": 5})
    r.step({"step": 1, "loss": 0.7, "lr": 2e-5})  # not a logged step: one line so a log shows numbers early
    r.step({"step": 5, "loss": 0.69, "lr": 1e-5})
    r.log({**TRAIN, "step": 5})
    r.log({"type": "eval", "step": 5, "epoch": 0.5, "validation/accuracy": 0.61})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("m · rte · stochastic") and "candidates 400 (40.000%)" in lines[0]
    assert lines[1].startswith("[step] step=1/10 loss=0.7000 lr=2.00e-05")
    assert lines[2].startswith("[train] step=5/10 epoch=0.5000 loss=0.6900 lr=1.00e-05 ex/s=12.5 "
                               "selected=0.120% changed=40.000% eta=")
    assert lines[3] == "[eval] step=5/10 epoch=0.5000 validation/accuracy=0.6100"
