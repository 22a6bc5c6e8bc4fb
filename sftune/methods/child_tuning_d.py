"""child-tuning-d: task-driven Child-Tuning with a Fisher mask fixed for the run (methods.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftune.errors import UsageError
from sftune.methods.masking import FlatMask, MaskedMethod
from sftune.options import option
from sftune.registry import register
from sftune.select import FlatBuffer, global_threshold_mask, pack_bits, unpack_bits


@dataclass
class ChildTuningDOptions:
    p: float = option(0.3, "reserve_p: the share of candidate entries KEPT (paper grid 0.1, 0.2, 0.3).",
                      gt=0, le=1)
    fisher_batches: int | None = option(None, "Batches in the Fisher pass; default: one full pass over the "
                                        "training set, as the reference does.")


@register
class ChildTuningD(MaskedMethod):
    name = "child-tuning-d"
    summary = ("Child-Tuning D: a Fisher-information mask over the encoder layers, computed once, fixed for the run, "
               "applied after clipping. Defaults warm up; the reference does not: --preset child-tuning.")
    details = ("Xu et al. 2021 (PKUnlp-icler/ChildTuning). Before training, one pass over the shuffled training "
               "set in train mode: per batch each candidate gradient is clipped to max_grad_norm separately and "
               "F += g^2 / n_batches. The pass runs after every plug-in's setup, so it scores the model that is "
               "trained (re-initialised layers, dropout set by regularisers). Candidates: parameters whose name "
               "contains 'layer' (encoder layers) or that sit in the model's layer stack (decoders: Llama "
               "model.layers, GPT-2 transformer.h); embeddings, pooler, final norm and head always train. With a "
               "causal-LM task the Fisher pass uses the LM loss. One global threshold "
               "tau = the (1-p) quantile of all candidate scores (NumPy percentile, linear interpolation, computed "
               "on the device); M = F >= tau. As in the reference (ChildTuningOptimizer.py:55-64) the mask acts "
               "after clipping the full gradient; update mode (sftune choice) keeps that order and updates only "
               "the masked entries. The reference trainer has no warmup (warmup_steps 0): --preset child-tuning "
               "reproduces that, sftune's default keeps train.warmup_ratio 0.1. "
               "The mask is kept as bool (1 B per candidate entry) and saved bit-packed in checkpoints.")
    Options = ChildTuningDOptions
    flat_capable = True  # select() returns a FlatMask
    mask_after_clip = True  # the reference masks inside optimizer.step(), after the trainer clipped

    def candidate(self, name, param) -> bool:
        if self.ctx.groups[name] == "head":
            return False
        # The reference's rule ('layer' in the name) plus the structural layer stack, which GPT-2's
        # transformer.h.N does not spell with 'layer'.
        return "layer" in name or name.startswith(self._stack)

    def _layer_prefixes(self, model) -> tuple[str, ...]:
        from sftune.architecture import layer_stack

        return tuple(f"{n}." for n, _ in layer_stack(model))

    def setup(self, ctx) -> None:
        self._stack = self._layer_prefixes(ctx.model)
        super().setup(ctx)
        if not self.candidates:
            raise UsageError("method child-tuning-d: the model has no parameters whose name contains 'layer'.")

    def after_setup(self) -> None:
        # After every plug-in's setup (the model as it is trained), before the optimizer and before accelerate
        # wraps the model (a backward through the unwrapped model of a DDP run would confuse DDP's reducer).
        # A resumed run recomputes the same mask and then loads the saved one.
        self._fisher_pass()

    def _fisher_pass(self) -> None:
        ctx = self.ctx
        model = ctx.model
        device = next(model.parameters()).device
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.candidates.items()}
        was_training = model.training
        model.train()  # dropout on, as in the reference
        n_batches = 0
        limit = self.options.fisher_batches
        max_norm = ctx.config.train.max_grad_norm
        rank, world = ctx.accelerator.process_index, ctx.accelerator.num_processes
        for i, batch in enumerate(ctx.train_loader):
            if limit is not None and i >= limit:
                break
            if i % world != rank:  # multi-process: each rank takes every world-th batch; summed below
                continue
            batch = {k: v.to(device) for k, v in batch.items() if k != "idx"}
            model.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            for name, p in self.candidates.items():
                if p.grad is None:
                    continue
                if max_norm > 0:
                    torch.nn.utils.clip_grad_norm_([p], max_norm)  # each tensor on its own, as the reference
                fisher[name].addcmul_(p.grad, p.grad)
            n_batches += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        names = list(fisher)
        if world > 1:
            flat = torch.cat([fisher[n].reshape(-1) for n in names] + [torch.tensor([float(n_batches)], device=device)])
            flat = ctx.accelerator.reduce(flat, reduction="sum")
            n_batches = int(flat[-1].item())
            offset = 0
            for n in names:
                size = fisher[n].numel()
                fisher[n] = flat[offset:offset + size].view_as(fisher[n])
                offset += size
        for n in names:
            fisher[n].div_(max(n_batches, 1))
        masks = global_threshold_mask([fisher[n] for n in names], self.options.p)
        # One bool buffer over the candidates (1 B per entry): with flat gradients the mask is one multiply.
        self.mask = FlatBuffer({n: p.shape for n, p in self.candidates.items()}, torch.bool, device, fill=None)
        for n, m in zip(names, masks):
            self.mask.views[n].copy_(m)
        self.fisher_batches_used = n_batches

    def select(self, step):
        return FlatMask(self.mask)  # the same buffer every step: fixed for the run

    def state_dict(self):
        return {"packed": {n: pack_bits(m) for n, m in self.mask.views.items()}}

    def load_state_dict(self, state):
        for n, packed in state["packed"].items():
            self.mask.views[n].copy_(unpack_bits(packed, self.candidates[n].numel(), self.candidates[n].shape))

    def state_bytes(self, peak: bool = False) -> dict[str, int]:
        return {"mask": self.mask.numel}  # fixed for the run: the peak is the same

    def state_estimate(self, mask_mode: str, flat_grads: bool) -> dict[str, int]:
        return {"mask": self.masked_numel()}  # bool, 1 B per candidate entry
