"""Run by tests/distributed/test_ddp.py under torchrun (1 or 2 CPU processes): trains every given method a few
steps on the tiny model, logging each rank's per-step mask hashes, and saves rank 0's final weights."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from sftune.config import build
from sftune.engine.loop import Trainer


def main(model: str, glue: str, out: str, methods: str) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out_dir = Path(out)
    for method in methods.split(","):
        extra = {"child-tuning-d": {"fisher_batches": 4}, "stochastic": {"k": 300}, "top": {"k": 300},
                 "random": {"k": 300}}.get(method, {})
        if method.startswith("dps"):
            extra = {"ur": 0.25}
        if method in ("lora", "dora"):
            extra = {"dropout": 0.0}  # as the model's: per-rank dropout streams differ from one process's
        tree = {"model": {"name": model, "dropout": 0.0}, "task": "rte",
                "method": {"name": method, "mask_mode": "update" if method in ("stochastic", "dps-mix") else "grad",
                           **extra},
                "data": {"data_dir": glue, "train_size": 64, "eval_batch_size": 128},
                "train": {"max_steps": 4, "batch_size": 8, "lr": 1e-3, "cpu": True, "log_every": 100,
                          "measure_changed": False, "mask_hash_log": str(out_dir / method)}}
        trainer = Trainer(build(tree))
        trainer.build()
        trainer._evaluate_and_record = lambda final=False: {}
        model_ = trainer.accelerator.unwrap_model(trainer.model)
        # The starting weights too: a method may add parameters (LoRA's adapters, under peft's names).
        weights = lambda: {n: p.detach().clone().contiguous() for n, p in model_.named_parameters()}  # noqa: E731
        start = weights()
        trainer.train()
        if trainer.accelerator.is_main_process:
            save_file(start, str(out_dir / f"{method}.start.safetensors"))
            save_file(weights(), str(out_dir / f"{method}.safetensors"))
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(*sys.argv[1:5])
