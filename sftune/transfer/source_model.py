"""The trained source model, run on the targets through the Trainer's own evaluation path: the same
tokenisation, batching, device and precision as the run's in-domain evaluation, only other rows.

Its head is the source task's (3-way for MNLI/SNLI/SICK): it gives source-label probabilities, which
report.py maps onto each target's labels.
"""

from __future__ import annotations

from typing import Any

import torch

from sftune.artifacts import RunDir
from sftune.config import RunConfig
from sftune.data import Splits
from sftune.engine.loop import Trainer
from sftune.models import load_model, load_tokenizer


class SourceModel(Trainer):
    """A Trainer built for evaluation only (`build(need_train=False)`): its eval sets are the targets' rows and
    its model the run's trained weights, where `sftune train` builds the pre-trained model on the task's splits.
    """

    def __init__(self, run: RunDir, cfg: RunConfig, targets: dict[str, Any]):
        super().__init__(cfg)
        self.targets = targets  # target name -> datasets.Dataset (idx, text_a, text_b, label)
        # A LoRA run without model/ (no method.merge): its base model plus the run's adapter/.
        self.adapter = run.path / "adapter" if not run.model.is_dir() and (run.path / "adapter").is_dir() else None
        self.weights = cfg.model.name if self.adapter else str(run.model)

    def make_tokenizer(self):
        return load_tokenizer(self.weights, self.cfg.model.trust_remote_code)

    def read_data(self, need_train: bool) -> Splits:
        return Splits(train=None, evals=dict(self.targets), source="transfer targets")

    def make_model(self):
        model = load_model(self.weights, self.task.num_labels, self.task.label_names, self.cfg.model.trust_remote_code)
        if self.adapter is not None:
            from sftune.methods.lora import load_adapter

            model = load_adapter(model, self.adapter)
        return model

    def probabilities(self, target: str) -> tuple[list[int], torch.Tensor]:
        """The rows' idx and their source-label probabilities (float32, in row order) for one target."""
        self.model.eval()
        idx, logits, _ = self.predict(self.eval_loaders[target])
        return idx.tolist(), logits.softmax(-1)
