"""The training loop: accelerate for devices, mixed precision and accumulation; plugins for the methods.

    build()              accelerator -> build_data (splits, subsample, encoding, loaders, step count)
                         -> build_model_and_plugins (seed, model, plug-ins: setup, after_setup, trainable)
                         -> build_optimizer (param groups, optimizer, schedule, accelerate, on_optimizer)
    train()              for each micro-batch: forward_backward; at the end of each accumulation, optimizer_step;
                         then log, evaluate, checkpoint
    forward_backward()   before_forward, forward, extra_loss, backward
    optimizer_step()     unscale; the guard; after_backward (masks); clip; after_clip (Child-Tuning's masks);
                         the optimizer step (or a plugin's); schedule; after_step
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

import torch

from sftune import causal_lm, lm_data
from sftune.artifacts import RunDir
from sftune.config import RunConfig
from sftune.data import HELDOUT, carve_validation, load_splits, make_loader, subsample, tokenize
from sftune.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from sftune.engine.distributed import MaskCheck, make_accelerator
from sftune.engine.evaluation import evaluate_classifier, predict
from sftune.engine.guard import NonFiniteGuard
from sftune.engine.optim import build_scheduler, make_optimizer, merge_groups, param_groups, total_steps
from sftune.engine.progress import Interrupted, Reporter, TrainerState
from sftune.engine.sparsity import SparsityMeter
from sftune.engine.timing import NullTimer
from sftune.methods.base import Hooks, RunContext, changes_gradients
from sftune.models import group_of_params, head_prefixes, load_model, load_tokenizer, trainable_table
from sftune.registry import get_method, get_regularizer
from sftune.tasks import get_task


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
        # What build() and train() fill in that info(), run.py and final_predictions read either way.
        self.n_train = self.total_steps = self.steps_per_epoch = 0
        self.train_subset_md5: str | None = None
        self.plugins: list[Hooks] = []
        self._predictions: dict[str, list[dict]] = {}

    # ------------------------------------------------------------------------------------------- build
    def build(self, need_train: bool = True) -> None:
        """Everything a run needs: the data, then the model with its plug-ins, then the optimizer. Without
        training data (`sftune eval`) only the evaluation sets and the model, prepared by accelerate."""
        self.accelerator = make_accelerator(self.cfg.train, need_train)
        self.build_data(need_train)
        self.build_model_and_plugins(need_train)
        if need_train:
            self.build_optimizer()
        else:  # eval loaders prepared as in training: batches on the model's device, rows gathered once
            self.model, *loaders = self.accelerator.prepare(self.model, *self.eval_loaders.values())
            self.eval_loaders = dict(zip(self.eval_loaders, loaders))

    def build_data(self, need_train: bool) -> None:
        """Tokenizer, splits (held-out part carved, then the subsample), encoded sets and their loaders."""
        cfg, task, tcfg = self.cfg, self.task, self.cfg.train
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
        # Causal LMs: cut to the model's context length, read once from its config (not once per split).
        self.max_length = causal_lm.usable_length(cfg) if task.is_causal_lm else cfg.data.max_length
        self.eval_sets = {s: self.encode(d) for s, d in self.splits.evals.items()}
        self.eval_loaders = {s: self.loader(d, cfg.data.eval_batch_size) for s, d in self.eval_sets.items()}
        if need_train:
            self.train_set = self.encode(train)
            self.train_loader = self.loader(self.train_set, tcfg.batch_size // tcfg.grad_accum,
                                            shuffle_seed=tcfg.seed)
            self.total_steps, self.steps_per_epoch = total_steps(tcfg, self.n_train)

    def build_model_and_plugins(self, need_train: bool) -> None:
        """The model (seeded: the new head's weights come from this RNG) and the plug-ins, set up on it."""
        cfg = self.cfg
        set_seed(cfg.train.seed)
        self.model = self.make_model()
        self.groups = group_of_params(self.model)
        self.method = get_method(cfg.method.name).from_config(cfg.method)
        regs = [get_regularizer(r.name).from_config(r) for r in cfg.regs]
        self.plugins = [self.method, *regs, *self.extra_plugins]
        if not need_train:
            return
        self.model.to(self.accelerator.device)
        ctx = RunContext(model=self.model, task=self.task, config=cfg, accelerator=self.accelerator,
                         train_loader=self.train_loader, total_steps=self.total_steps, groups=self.groups,
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

    def build_optimizer(self) -> None:
        """Parameter groups (plug-ins adjust them), the optimizer (the method's own, or AdamW), the schedule;
        then accelerate wraps model, optimizer and loaders, and the plug-ins get the optimizer."""
        tcfg = self.cfg.train
        groups = param_groups(self.model, self.groups, tcfg)
        for plugin in self.plugins:
            groups = plugin.param_groups(groups)
        optimizer = make_optimizer(merge_groups(groups), tcfg, self.method)
        # The scheduler steps once per optimizer step, by us: accelerate's wrapper would step it once per
        # process, which changes the schedule under data parallelism.
        self.scheduler = build_scheduler(optimizer, tcfg, self.total_steps)
        self.model, self.optimizer, self.train_loader, *loaders = self.accelerator.prepare(
            self.model, optimizer, self.train_loader, *self.eval_loaders.values())
        self.eval_loaders = dict(zip(self.eval_loaders, loaders))
        for plugin in self.plugins:
            plugin.on_optimizer(self.optimizer)  # the object optimizer_step gets too (methods/base.py)
        self.trainable_params = [p for p in self.model.parameters() if p.requires_grad]
        self.guard = NonFiniteGuard(tcfg.nonfinite, check_grads=tcfg.precision != "fp16")
        # The guard's gradient norm is the clip's too when no plug-in can change the gradients between them.
        self.clip_reuses_guard_norm = self.guard.check_grads and not any(map(changes_gradients, self.plugins))
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
            return lm_data.encode_lm(dataset, self.tokenizer, self.max_length)
        return tokenize(dataset, self.tokenizer, self.task, self.max_length)

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
                "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
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
                self.train_loader.set_epoch(st.epoch)  # accelerate's loader hands it to the EpochSampler
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
        """One micro-batch; returns True when it completed an optimizer step (taken, or skipped by the guard)."""
        step = self.state.step + 1
        with self.accelerator.accumulate(self.model):
            self.forward_backward(batch, step, window)
            if not self.accelerator.sync_gradients:
                return False  # accumulating: the optimizer step comes with a later micro-batch
            self.optimizer_step(step)
        return True

    def forward_backward(self, batch: dict, step: int, window: dict) -> None:
        """Forward (plus the plug-ins' loss terms) and backward of one micro-batch; its loss goes to `window`."""
        timer = self.phases
        batch = dict(batch)
        batch.pop("idx", None)
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
            self.accelerator.backward(loss)
        loss_value = loss.detach().float().item()
        self.guard.note_loss(loss_value)
        window["loss"] += loss_value
        window["n"] += 1
        window["examples"] += batch["input_ids"].shape[0]

    def optimizer_step(self, step: int) -> None:
        """The accumulated gradients: checked, masked by the plug-ins, clipped; then the optimizer and the
        schedule step. A step the guard refuses in skip mode only advances the schedule."""
        timer, train_cfg = self.phases, self.cfg.train
        with timer("selection"):
            self.accelerator.unscale_gradients()  # selectors see unscaled gradients (no-op without fp16)
            if not self.guard.step_ok(step, self.trainable_params):  # stops, or skips the step:
                return self._skip_step()  # non-finite gradients never reach a selector or the optimizer
            for plugin in self.plugins:
                plugin.after_backward(step)
        measure = train_cfg.measure_changed and self._is_log_step(step)
        if measure:
            self.meter.take_snapshot()
        with timer("optimizer"):
            if train_cfg.max_grad_norm > 0:
                self._clip(train_cfg.max_grad_norm)
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

    def _clip(self, max_norm: float) -> None:
        norm = self.guard.grad_norm if self.clip_reuses_guard_norm else None
        if norm is None:
            torch.nn.utils.clip_grad_norm_(self.trainable_params, max_norm)
        else:  # what clip_grad_norm_ does after computing this same norm of these same gradients
            torch.nn.utils.clip_grads_with_norm_(self.trainable_params, max_norm, norm)

    def _skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()  # the schedule keeps counting steps, as with mixed precision's skipped steps
        self.phases.end_step()

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
        return evaluate_classifier(self)

    def predict(self, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row ids, float32 logits and gold labels of every example `loader` yields (engine/evaluation.py)."""
        return predict(self, loader)

    @property
    def final_predictions(self) -> dict[str, list[dict]]:
        return self._predictions

