from rich.console import Console

from sftune.cli.render import PlainReporter, RichReporter

INFO = {"model": "m", "task": "rte", "method": "bitfit", "mask_mode": "grad", "n_train": 10, "total_steps": 4,
        "eval_splits": ["validation"], "main_metric": "accuracy",
        "trainable": {"all": {"total": 1000, "trainable": 1}, "bias": {"total": 10, "trainable": 1}}}


def test_live_table_shows_step_loss_lr_metric_speed_and_trainable_share():
    console = Console(record=True, force_terminal=True, width=140)
    r = RichReporter(console)
    r.start(INFO)
    r.log({"type": "train", "step": 2, "epoch": 0.5, "loss": 0.69, "lr": 1e-5, "examples_per_s": 12.5,
           "selected": 0.001})
    r.log({"type": "eval", "step": 2, "epoch": 0.5, "validation/accuracy": 0.61})
    r.finish({"metrics": {"validation": {"accuracy": 0.61}}, "run_dir": "x"})
    text = console.export_text()
    for fragment in ("step", "loss", "lr", "validation/accuracy", "ex/s", "0.6900", "1.00e-05", "0.6100",
                     "trainable 1 (0.100%)", "selected %"):
        assert fragment in text, fragment


def test_plain_lines(capsys):
    import sys

    r = PlainReporter(sys.stdout)
    r.start(INFO)
    r.log({"type": "train", "step": 2, "epoch": 0.5, "loss": 0.69, "lr": 1e-5, "examples_per_s": 12.5})
    out = capsys.readouterr().out
    assert "[train] step=2" in out and "loss=0.6900" in out
