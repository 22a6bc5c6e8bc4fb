"""The training loop: accelerate for devices, mixed precision and accumulation; plugins for the methods.

    build()   seed -> tokenizer -> model -> data -> setup (method, regs) -> after_setup (scoring passes)
              -> trainable -> optimizer -> schedule
    train()   for each optimizer step: before_forward, forward, extra_loss, backward (accumulated);
              unscale; after_backward (masks); clip; after_clip (Child-Tuning's masks); optimizer step
              (or a plugin's); schedule; after_step;
              log, evaluate, checkpoint
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from sftune import causal_lm, lm_data
from sftune import metrics as metric_fns
from sftune.artifacts import RunDir
from sftune.config import RunConfig
from sftune.data import HELDOUT, carve_validation, load_splits, make_loader, subsample, tokenize
from sftune.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from sftune.engine.distributed import MaskCheck
from sftune.engine.guard import NonFiniteGuard
from sftune.engine.optim import build_optimizer, build_scheduler, merge_groups, param_groups, total_steps
from sftune.engine.sparsity import SparsityMeter
from sftune.engine.timing import NullTimer
from sftune.errors import UsageError
from sftune.methods.base import Hooks, RunContext
from sftune.models import group_of_params, head_prefixes, load_model, load_tokenizer, trainable_table
from sftune.registry import get_method, get_regularizer
from sftune.tasks import get_task


class Reporter:
    """Receives progress; the CLI renders it (Rich table, plain lines or nothing)."""

    def start(self, info: dict) -> None: ...
    def step(self, progress: dict) -> None: ...  # every optimizer step: step, loss since the last log, lr
    def evaluating(self, step: int) -> None: ...  # an evaluation begins (its record follows through log)
    def log(self, record: dict) -> None: ...
    def finish(self, results: dict) -> None: ...


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    examples: int = 0
    train_seconds: float = 0.0
    last_eval: dict = field(default_factory=dict)


class Interrupted(Exception):
    """Training stopped by Ctrl-C after a checkpoint was written."""


def set_seed(seed: int) -> None:
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: RunDir | None = None, reporter: Reporter | None = None,
                 extra_plugins: list[Hooks] | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.reporter = reporter or Reporter()
        self.task = get_task(cfg.task)
        self.extra_plugins = list(extra_plugins or [])
        self.state = TrainerState()
        self.phases = NullTimer()  # the profiler swaps in a PhaseTimer

    # ------------------------------------------------------------------------------------------- build
    def build(self, need_train: bool = True) -> None:
        from accelerate import Accelerator

        cfg, task = self.cfg, self.task
        tcfg = cfg.train
        from accelerate import DataLoaderConfiguration

        # split_batches: batch_size is the global batch whatever the number of processes, so a run on N
        # processes takes the same optimizer steps as on one (and its masks come from the same gradients).
        self.accelerator = Accelerator(mixed_precision=tcfg.precision, cpu=tcfg.cpu,
                                       gradient_accumulation_steps=tcfg.grad_accum,
                                       dataloader_config=DataLoaderConfiguration(split_batches=True))
        world = self.accelerator.num_processes
        if need_train and (tcfg.batch_size // tcfg.grad_accum) % world:
            raise UsageError(f"train.batch_size / train.grad_accum = {tcfg.batch_size // tcfg.grad_accum} must be "
                             f"divisible by the {world} processes (each takes an equal share of every batch).")
        self.tokenizer = self.make_tokenizer()
        self.splits = self.read_data(need_train)
        train = self.splits.train
        if need_train and cfg.data.validation_from_train:  # before the subsample: the two never overlap
            train, self.splits.evals[HELDOUT] = carve_validation(train, cfg.data.validation_from_train,
                                                                 cfg.data.validation_seed, task)
        if need_train and cfg.data.train_size:
            train = subsample(train, cfg.data.train_size, tcfg.seed, cfg.data.stratified, task)
            self.train_subset_md5 = hashlib.md5(",".join(map(str, train["idx"])).encode()).hexdigest()
        self.n_train = len(train) if train is not None else 0
        self.eval_sets = {s: self.encode(d) for s, d in self.splits.evals.items()}
        self.eval_raw = self.splits.evals
        # Seed right before the model is built: the new head's initial weights come from this RNG.
        set_seed(tcfg.seed)
        self.model = self.make_model()
        self.groups = group_of_params(self.model)
        self.method = get_method(cfg.method.name).from_config(cfg.method)
        regs = [get_regularizer(r.name).from_config(r) for r in cfg.regs]
        self.plugins: list[Hooks] = [self.method, *regs, *self.extra_plugins]
        self.eval_loaders = {s: self.loader(d, cfg.data.eval_batch_size) for s, d in self.eval_sets.items()}
        if not need_train:
            self.model = self.accelerator.prepare(self.model)
            return
        micro = tcfg.batch_size // tcfg.grad_accum
        self.train_set = self.encode(train)
        loader = self.loader(self.train_set, micro, shuffle_seed=tcfg.seed)
        self.total_steps, self.steps_per_epoch = total_steps(tcfg, self.n_train)
        self.model.to(self.accelerator.device)
        ctx = RunContext(model=self.model, task=task, config=cfg, accelerator=self.accelerator,
                         train_loader=loader, total_steps=self.total_steps, groups=self.groups,
                         head=head_prefixes(self.model))
        for plugin in self.plugins:
            plugin.setup(ctx)
        # setup may add parameters (LoRA injects adapters): group them too (ctx.groups is this dict)
        self.groups.update(group_of_params(self.model))
        for plugin in self.plugins:  # scoring passes see the model every plug-in has changed (methods.md 0)
            plugin.after_setup()
        for name, p in self.model.named_parameters():
            votes = [v for v in (pl.trainable(name, p) for pl in self.plugins) if v is not None]
            p.requires_grad_(all(votes) if votes else True)
        groups = param_groups(self.model, self.groups, tcfg)
        for plugin in self.plugins:
            groups = plugin.param_groups(groups)
        optimizer = build_optimizer(merge_groups(groups), tcfg, cfg.method.mask_mode)
        # The scheduler steps once per optimizer step, by us: accelerate's wrapper would step it once per
        # process, which changes the schedule under data parallelism.
        self.scheduler = build_scheduler(optimizer, tcfg, self.total_steps)
        self.model, self.optimizer, self.train_loader, *loaders = self.accelerator.prepare(
            self.model, optimizer, loader, *self.eval_loaders.values())
        self.eval_loaders = dict(zip(self.eval_loaders, loaders))
        for plugin in self.plugins:
            plugin.on_optimizer(self.optimizer)  # the object optimizer_step gets too (methods/base.py)
        self.trainable_params = [p for p in self.model.parameters() if p.requires_grad]
        self.guard = NonFiniteGuard(tcfg.nonfinite, check_grads=tcfg.precision != "fp16")
        self.meter = SparsityMeter(self.accelerator.unwrap_model(self.model), self.groups)
        self.mask_check = MaskCheck(self.accelerator, tcfg.check_masks, tcfg.mask_hash_log)

    # --------------------------------------------------------------------------------------- inputs
    # What build() reads. A subclass replaces these to feed other inputs through the same build (memprofile:
    # synthetic batches and a config-built model, no tokenizer or dataset).
    def make_tokenizer(self):
        m = self.cfg.model
        return load_tokenizer(m.name, m.trust_remote_code, m.revision)

    # Causal-LM tasks (task.is_causal_lm) read instruction data and build an AutoModelForCausalLM instead.
    def read_data(self, need_train: bool):
        if self.task.is_causal_lm:
            return lm_data.load_lm_splits(self.task, self.cfg.data, need_train=need_train)
        return load_splits(self.task, self.cfg.data, need_train=need_train)

    def encode(self, dataset):
        if self.task.is_causal_lm:
            return lm_data.encode_lm(dataset, self.tokenizer, self.cfg.data.max_length)
        return tokenize(dataset, self.tokenizer, self.task, self.cfg.data.max_length)

    def loader(self, dataset, batch_size: int, shuffle_seed: int | None = None):
        if self.task.is_causal_lm:
            return lm_data.make_lm_loader(dataset, self.tokenizer, batch_size, shuffle_seed=shuffle_seed)
        return make_loader(dataset, self.tokenizer, batch_size, shuffle_seed=shuffle_seed)

    def make_model(self):
        m = self.cfg.model
        if self.task.is_causal_lm:
            return causal_lm.load_causal_lm(m.name, m.trust_remote_code, m.revision, m.dropout)
        return load_model(m.name, self.task.num_labels, self.task.label_names, m.trust_remote_code, m.revision,
                          m.dropout)

    def reference_weights(self) -> dict[str, torch.Tensor]:
        """The weights training started from: the pre-trained model plus the head the seed initialised.
        Rebuilt from disk with the same seed (memory is needed only at the end, not during training)."""
        cfg = self.cfg
        set_seed(cfg.train.seed)
        base = self.make_model()
        # Methods that modify weights before training (re-initialisation) record their own starting point.
        for plugin in self.plugins:
            start = plugin.initial_weights()
            if start:
                base.load_state_dict(start, strict=False)
        return {n: p.detach() for n, p in base.named_parameters()}

    def info(self) -> dict[str, Any]:
        table = trainable_table(self.accelerator.unwrap_model(self.model))
        return {"task": self.task.name, "model": self.cfg.model.name, "method": self.cfg.method.name,
                "mask_mode": self.cfg.method.mask_mode, "n_train": self.n_train,
                "total_steps": getattr(self, "total_steps", 0), "steps_per_epoch": getattr(self, "steps_per_epoch", 0),
                "trainable": table, "selects_per_step": self.method.selects_per_step,
                "log_every": self.cfg.train.log_every, "eval_splits": list(self.eval_sets),
                "main_metric": self.task.main_metric}

    # ------------------------------------------------------------------------------------------- train
    def resume(self) -> bool:
        """Load the run directory's checkpoint, if any; True when training continues from it."""
        ckpt = self.run_dir.checkpoint if self.run_dir else None
        if ckpt is None or not (ckpt / "trainer_state.json").is_file():
            return False
        model = self.accelerator.unwrap_model(self.model)
        state, rng = load_checkpoint(ckpt, model, self.optimizer, self.scheduler, self.plugins)
        self.state = TrainerState(**state)
        self._rng = rng
        restore_rng(rng)
        if self.accelerator.is_main_process:
            self.run_dir.truncate_metrics(self.state.step)
        return True

    def train(self) -> dict[str, Any]:
        cfg, st, acc = self.cfg.train, self.state, self.accelerator
        self._rng = capture_rng()
        self._boundary = dataclasses.replace(st)  # the state as of the last completed optimizer step
        self.model.train()
        self._t_start = time.perf_counter() - st.train_seconds
        self._last_save = time.monotonic()
        window = {"loss": 0.0, "n": 0, "examples": 0, "t": time.perf_counter()}
        try:
            while st.step < self.total_steps:
                _set_epoch(self.train_loader, st.epoch)
                loader = self.train_loader
                if st.batches_in_epoch:  # resuming mid-epoch: same order, skip what was consumed
                    loader = acc.skip_first_batches(self.train_loader, st.batches_in_epoch)
                for batch in loader:
                    st.batches_in_epoch += 1
                    st.examples += batch["input_ids"].shape[0]
                    if self._micro_step(batch, window):
                        self._after_optimizer_step(window)
                        if st.step >= self.total_steps:
                            break
                else:
                    st.epoch += 1
                    st.batches_in_epoch = 0
                    self._boundary = dataclasses.replace(st)
                    if not cfg.eval_every and st.step < self.total_steps:
                        self._evaluate_and_record()
                        self.save_checkpoint()
        except KeyboardInterrupt:
            self.save_checkpoint()
            raise Interrupted(f"interrupted at step {self._boundary.step}; checkpoint saved") from None
        st.train_seconds = time.perf_counter() - self._t_start
        return self._evaluate_and_record(final=True)

    def _after_optimizer_step(self, window: dict) -> None:
        cfg, st = self.cfg.train, self.state
        st.step += 1
        st.train_seconds = time.perf_counter() - self._t_start
        self._rng = capture_rng()
        self._boundary = dataclasses.replace(st)
        self.reporter.step({"step": st.step, "loss": window["loss"] / max(window["n"], 1),
                            "lr": self.scheduler.get_last_lr()[0]})
        if self._is_log_step(st.step):
            self._log(window)
        if st.step < self.total_steps:
            if cfg.eval_every and st.step % cfg.eval_every == 0:
                self._evaluate_and_record()
            save_every = cfg.save_every or cfg.eval_every
            overdue = cfg.save_minutes and time.monotonic() - self._last_save >= cfg.save_minutes * 60
            if (save_every and st.step % save_every == 0) or overdue:
                self.save_checkpoint()

    def _is_log_step(self, step: int) -> bool:
        return step % self.cfg.train.log_every == 0 or step == self.total_steps

    def _micro_step(self, batch: dict, window: dict) -> bool:
        """One forward/backward; returns True when it completed an optimizer step."""
        acc, st = self.accelerator, self.state
        batch = dict(batch)
        batch.pop("idx", None)
        step = st.step + 1
        timer = self.phases
        with acc.accumulate(self.model):
            with timer("hooks"):  # stage switches, mask draws: timed apart from the model's forward
                for plugin in self.plugins:
                    plugin.before_forward(step)
            with timer("forward"):
                outputs = self.model(**batch)
                loss = outputs.loss
            with timer("extra_loss"):
                for plugin in self.plugins:
                    extra = plugin.extra_loss(self.model, batch, outputs)
                    if extra is not None:
                        loss = loss + extra
            with timer("backward"):
                acc.backward(loss)
            loss_value = loss.detach().float().item()
            self.guard.note_loss(loss_value)
            window["loss"] += loss_value
            window["n"] += 1
            window["examples"] += batch["input_ids"].shape[0]
            if not acc.sync_gradients:
                return False
            with timer("selection"):
                acc.unscale_gradients()  # selectors see unscaled gradients (no-op without fp16)
                if not self.guard.step_ok(step, self.trainable_params):  # stops, or skips the step:
                    return self._skip_step()  # non-finite gradients never reach a selector or the optimizer
                for plugin in self.plugins:
                    plugin.after_backward(step)
            measure = self.cfg.train.measure_changed and self._is_log_step(step)
            if measure:
                self.meter.take_snapshot()
            with timer("optimizer"):
                if self.cfg.train.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.trainable_params, self.cfg.train.max_grad_norm)
            with timer("selection"):
                for plugin in self.plugins:  # masks of references that clip the full gradient first
                    plugin.after_clip(step)
                if self.mask_check.active:  # per-parameter masks are derived on demand: only if checked
                    self.mask_check.check(step, self.method.masks)
            with timer("optimizer"):
                if not any(plugin.optimizer_step(self.optimizer) for plugin in self.plugins):
                    self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            if measure:
                self.meter.measure_changed()
            with timer("selection"):
                for plugin in self.plugins:
                    plugin.after_step(step)
            timer.end_step()
        return True

    def _skip_step(self) -> bool:
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # the schedule keeps counting steps, as with mixed precision's skipped steps
        self.phases.end_step()
        return True

    def _log(self, window: dict) -> None:
        st = self.state
        now = time.perf_counter()
        record = {"type": "train", "step": st.step, "epoch": round(st.step / self.steps_per_epoch, 3),
                  "loss": window["loss"] / max(window["n"], 1), "lr": self.scheduler.get_last_lr()[0],
                  "examples_per_s": window["examples"] / max(now - window["t"], 1e-9)}
        selected = self.method.selected_counts()
        if selected is None:  # a dense method: every trainable entry
            selected = self.meter.dense_selected()
        record.update(self.meter.record(selected))
        for plugin in self.plugins:
            record.update(plugin.stats())
        if self.guard.skipped:
            record["skipped_steps"] = self.guard.skipped
        window.update(loss=0.0, n=0, examples=0, t=now)
        self._record(record)

    def _record(self, record: dict) -> None:
        if self.run_dir and self.accelerator.is_main_process:
            self.run_dir.append_metrics(record)
        self.reporter.log(record)

    def _evaluate_and_record(self, final: bool = False) -> dict:
        self.reporter.evaluating(self.state.step)
        self.guard.check_weights(self.state.step, self.accelerator.unwrap_model(self.model))
        results, preds = self.evaluate(generate=final)
        self.state.last_eval = {s: r for s, r in results.items()}
        record = {"type": "eval", "step": self.state.step, "epoch": round(self.state.step / self.steps_per_epoch, 3),
                  **{f"{s}/{k}": v for s, r in results.items() for k, v in r.items()}}
        self._record(record)
        self.model.train()
        if final:
            self._predictions = preds
        return results

    def save_checkpoint(self) -> None:
        if not self.run_dir or not self.accelerator.is_main_process:
            return
        self.guard.check_weights(self._boundary.step, self.accelerator.unwrap_model(self.model))
        self._last_save = time.monotonic()
        state = dataclasses.asdict(self._boundary)
        save_checkpoint(self.run_dir.checkpoint, self.accelerator.unwrap_model(self.model), self.optimizer,
                        self.scheduler, self.plugins, state, self._rng)

    # -------------------------------------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self, generate: bool = True) -> tuple[dict[str, dict], dict[str, list[dict]]]:
        """Metrics per eval split and per-example predictions (idx, label, prediction[, probabilities]).
        Causal-LM tasks: loss and perplexity, plus generated answers and their score when `generate`."""
        if self.task.is_causal_lm:
            return causal_lm.evaluate_lm(self, generate)
        self.model.eval()
        for plugin in self.plugins:
            plugin.eval_mode()
        results, predictions = {}, {}
        for split, loader in self.eval_loaders.items():
            idxs, golds, outs = [], [], []
            for batch in loader:
                batch = dict(batch)
                idx = batch.pop("idx")
                labels = batch.pop("labels", None)
                logits = self.model(**batch).logits.float()
                idx, logits, labels = self.accelerator.gather_for_metrics((idx, logits, labels))
                idxs.append(idx.cpu())
                outs.append(logits.cpu())
                golds.append(labels.cpu())
            logits = torch.cat(outs)
            NonFiniteGuard.check_outputs(self.state.step, split, logits)  # no metric from NaN outputs
            gold = torch.cat(golds)
            rows = []
            if self.task.is_regression:
                pred = logits.squeeze(-1)
                for i, p, g in zip(torch.cat(idxs).tolist(), pred.tolist(), gold.tolist()):
                    rows.append({"idx": i, "label": g, "prediction": p})
            else:
                probs = logits.softmax(-1)
                pred = probs.argmax(-1)
                names = self.task.label_names
                for i, p, g, pr in zip(torch.cat(idxs).tolist(), pred.tolist(), gold.tolist(), probs.tolist()):
                    rows.append({"idx": i, "label": names[g], "prediction": names[p],
                                 "probabilities": [round(x, 6) for x in pr]})
            results[split] = metric_fns.compute(self.task.metrics, pred.tolist(), gold.tolist())
            predictions[split] = rows
        for plugin in self.plugins:
            plugin.train_mode()
        return results, predictions

    @property
    def final_predictions(self) -> dict[str, list[dict]]:
        return getattr(self, "_predictions", {})


def _set_epoch(loader, epoch: int) -> None:
    """Reach the EpochSampler through accelerate's wrappers (its order depends on (seed, epoch) only)."""
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None),
                getattr(getattr(getattr(loader, "batch_sampler", None), "batch_sampler", None), "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
