"""Experiment trackers (`train.report_to` / `--report-to`): TensorBoard, Weights & Biases, MLflow, trackio,
through accelerate's tracker classes, the way the HF Trainer's `report_to` works. Off by default.

The trackers see what metrics.jsonl holds (train records as train/KEY, evaluations as SPLIT/METRIC, shares as
fractions) and the resolved config as hyperparameters. Their files go under RUN_DIR/trackers. Offline-safe:
W&B runs in offline mode unless it has an API key or WANDB_MODE says otherwise (`wandb sync` uploads later),
and MLflow writes to a local store unless MLFLOW_TRACKING_URI points elsewhere.
"""

from __future__ import annotations

import os

from sftune.engine.loop import Reporter
from sftune.errors import UsageError

# name -> the accelerate availability check and the package a user installs
TRACKERS = {"tensorboard": ("is_tensorboard_available", "tensorboard"),
            "wandb": ("is_wandb_available", "wandb"),
            "mlflow": ("is_mlflow_available", "mlflow"),
            "trackio": ("is_trackio_available", "trackio")}


def parse(report_to: str | None) -> list[str]:
    """The tracker names of a comma-separated --report-to; checks each is known and installed."""
    import accelerate.utils

    names = [n.strip().lower() for n in (report_to or "").split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in TRACKERS:
            raise UsageError(f"--report-to '{name}': expected a comma-separated list of "
                             f"{', '.join(TRACKERS)}.")
        check, package = TRACKERS[name]
        if not getattr(accelerate.utils, check)():
            raise UsageError(f"--report-to {name} needs the {package} package: pip install {package} "
                             f"(or leave {name} out).")
    return list(dict.fromkeys(names))


def hyperparameters(tree: dict, prefix: str = "") -> dict:
    """The config flattened to the scalar values trackers accept (lists become strings)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(hyperparameters(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
    return out


def values_of(record: dict) -> dict[str, float]:
    """A metrics.jsonl record as tracker values: train/loss, train/lr, ...; validation/accuracy, ..."""
    out = {}
    for key, value in record.items():
        if key in ("type", "step") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key if record["type"] == "eval" else f"train/{key}"] = value
    return out


class TrackingReporter(Reporter):
    """Forwards everything to the screen's reporter and logs records and the config to the trackers."""

    def __init__(self, inner: Reporter, names: list[str], config: dict, run_dir):
        self.inner, self.names, self.config = inner, names, config
        self.root = run_dir.path / "trackers"
        self.run_name = run_dir.path.name
        self.trackers: list = []

    def start(self, info: dict) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.root.mkdir(parents=True, exist_ok=True)
        if "wandb" in self.names and not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")):
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_DIR", str(self.root))
        os.environ.setdefault("MLFLOW_TRACKING_URI", (self.root / "mlruns").resolve().as_uri())
        for name in self.names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(self.run_name, str(self.root)) if name == "tensorboard" else cls(self.run_name)
            tracker.start()
            tracker.store_init_configuration(hyperparameters(self.config))
            self.trackers.append(tracker)
        self.inner.start(info)

    def step(self, progress: dict) -> None:
        self.inner.step(progress)

    def evaluating(self, step: int) -> None:
        self.inner.evaluating(step)

    def log(self, record: dict) -> None:
        values = values_of(record)
        for tracker in self.trackers:
            tracker.log(values, step=record["step"])
        self.inner.log(record)

    def finish(self, results: dict) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
        self.inner.finish(results)


def with_trackers(reporter: Reporter, config, run_dir) -> Reporter:
    names = parse(config.train.report_to)
    return TrackingReporter(reporter, names, config.to_dict(), run_dir) if names else reporter
