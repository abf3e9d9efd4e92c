"""The learning rate as a knob of a Trainer run: probes train a few steps on a fork of the trainable state.

:class:`TrainingFork` takes the trainable state (parameters, gradients, buffers, optimizer
state) and puts it back bit for bit; :class:`LearningRateKnob` commits a rate by rescaling
the scheduler's base rates and probes one by a forked lookahead.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from hpctl.errors import ConfigError, shorten
from hpctl.integrations.base import TrainerContext, TrainerKnob, autocast_for, model_device, to_device
from hpctl.knob import Knob

__all__ = ["LearningRateKnob", "TrainingFork"]


class TrainingFork:
    """The trainable state, taken now and put back bit for bit by :meth:`restore`.

    Holds clones of the trainable parameters, their gradients, every buffer, the
    optimizer's per-parameter state and its group settings, and the model's train/eval
    mode. Restoring writes into the same tensors (``copy_``), so the optimizer's references
    stay valid; state the fork did not have is deleted.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.values = [p.detach().clone() for p in self.params]
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.state = {p: {k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in st.items()}
                      for p, st in optimizer.state.items()}
        self.groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        self.training = model.training

    def restore(self) -> None:
        opt = self.optimizer
        with torch.no_grad():
            for p, v, g in zip(self.params, self.values, self.grads):
                p.copy_(v)
                p.grad = None if g is None else g.clone()
            for b, v in self.buffers:
                b.copy_(v)
            for p in [p for p in opt.state if p not in self.state]:
                del opt.state[p]
            for p, saved in self.state.items():
                cur = opt.state[p]
                for k in [k for k in cur if k not in saved]:
                    del cur[k]
                for k, v in saved.items():
                    now = cur.get(k)
                    if torch.is_tensor(v) and torch.is_tensor(now) and now.shape == v.shape and now.dtype == v.dtype:
                        now.copy_(v)
                    else:
                        cur[k] = v.clone() if torch.is_tensor(v) else copy.deepcopy(v)
        for g, saved in zip(opt.param_groups, self.groups):
            g.update(copy.deepcopy(saved))
        self.model.train(self.training)


def _inner(obj: Any, attr: str) -> Any:
    """The torch object inside an accelerate wrapper (``AcceleratedOptimizer.optimizer``, ...)."""
    inner = getattr(obj, attr, None)
    return inner if inner is not None and inner is not obj else obj


class LearningRateKnob(TrainerKnob):
    """The learning rate (peak of the Trainer's schedule), learned on a log scale.

    Committing a value rescales the scheduler's base learning rates (the schedule's warmup
    and decay still multiply it; several parameter groups keep their ratios). A probe
    forks the trainable state (:class:`TrainingFork`: trainable parameters - the LoRA
    factors, or a small model's weights - their gradients, buffers, optimizer state, random
    generators), trains ``lookahead_steps`` optimizer steps at the candidate (times the
    schedule's current factor), scores, and restores all of it bit for bit.

    Lookahead batches: ``lookahead_steps`` batches of ``batch_size`` (default the Trainer's
    train batch size) drawn from ``train_data`` (collated with ``data_collator``), by default
    from the Trainer's own training set through its collator; each round draws its own
    (seeded by the session seed and the step) and every candidate of a round trains on the
    same ones. Gradient accumulation, gradient clipping (``max_grad_norm``) and mixed
    precision follow the Trainer's arguments only as far as: one micro-batch per step,
    clipping applied, autocast for bf16/fp16 (no loss scaling).
    """

    def __init__(self, low: float = 1e-6, high: float = 1e-2, default: float | None = None, *,
                 name: str = "learning_rate", lookahead_steps: int = 4, train_data: Sequence[Any] | None = None,
                 data_collator: Callable | None = None, batch_size: int | None = None) -> None:
        for what, value in (("low", low), ("high", high), ("default", default)):
            if value is not None and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)):
                raise ConfigError(f"LearningRateKnob: {what} must be a number, got {shorten(repr(value))}")
        if not 0 < low < high:
            raise ConfigError(f"learning rate bounds need 0 < low < high, got [{low}, {high}]")
        if isinstance(lookahead_steps, bool) or not isinstance(lookahead_steps, int) or lookahead_steps < 1:
            raise ConfigError(f"lookahead_steps must be a positive integer, got {lookahead_steps!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.low, self.high, self.name = float(low), float(high), name
        self.default = default
        self.lookahead_steps = lookahead_steps
        self.train_data, self.data_collator, self.batch_size = train_data, data_collator, batch_size
        if default is not None:
            self.knob = Knob(name, self.low, self.high, default=float(default), log=True)
        self._batches: tuple[int, list[dict[str, Any]]] | None = None

    def setup(self, ctx: TrainerContext) -> None:
        super().setup(ctx)
        if self.default is None:  # start where the Trainer's arguments start
            lr = float(np.clip(ctx.args.learning_rate, self.low, self.high))
            self.knob = Knob(self.name, self.low, self.high, default=lr, log=True)
        self.optimizer = _inner(ctx.optimizer, "optimizer")
        self.scheduler = _inner(ctx.lr_scheduler, "scheduler")
        if self.optimizer is None:
            raise ConfigError("LearningRateKnob needs the Trainer's optimizer (none at the start of training)")
        self.params = [p for p in ctx.model.parameters() if p.requires_grad]
        if self.train_data is None:
            loader = ctx.train_dataloader
            if loader is None or getattr(loader, "dataset", None) is None:
                raise ConfigError("LearningRateKnob needs train_data (the Trainer's training set is not indexable)")
            self.train_data, self.data_collator = loader.dataset, loader.collate_fn
        try:
            n = len(self.train_data)
        except TypeError:
            raise ConfigError("LearningRateKnob needs indexable train_data (an iterable dataset has no length)") from None
        if n < 1:
            raise ConfigError("LearningRateKnob's train_data is empty")
        if self.batch_size is None:
            self.batch_size = int(getattr(ctx.args, "per_device_train_batch_size", 8))
        base = self.scheduler.base_lrs if self.scheduler is not None and hasattr(self.scheduler, "base_lrs") else \
            [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
        top = max(base) if base else 1.0
        self._shares = [b / top if top > 0 else 1.0 for b in base]

    def _factor(self) -> float:
        """The schedule's multiplier now (1 without a scheduler): current lr / base lr of group 0."""
        g0 = self.optimizer.param_groups[0]
        base = self.scheduler.base_lrs[0] if self.scheduler is not None and hasattr(self.scheduler, "base_lrs") \
            else g0.get("initial_lr", g0["lr"])
        return g0["lr"] / base if base > 0 else 1.0

    def apply(self, value: np.ndarray) -> None:
        lr = float(value[0])
        factor = self._factor()
        for i, g in enumerate(self.optimizer.param_groups):
            share = self._shares[i] if i < len(self._shares) else 1.0
            g["initial_lr"] = lr * share
            g["lr"] = lr * share * factor
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [g["initial_lr"] for g in self.optimizer.param_groups]
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _lookahead_batches(self) -> list[dict[str, Any]]:
        step = self.ctx.step
        if self._batches is None or self._batches[0] != step:
            rng = np.random.default_rng([int(self.ctx.seed), int(step)])
            n = len(self.train_data)
            need = self.lookahead_steps * self.batch_size
            idx = rng.permutation(n)[:need] if need <= n else rng.integers(0, n, need)
            rows = [self.train_data[int(i)] for i in idx]
            batches = self.ctx.collate(rows, self.data_collator, self.batch_size)
            self._batches = (step, batches)
        return self._batches[1]

    def probe(self, value: np.ndarray) -> float:
        model, opt, args = self.ctx.model, self.optimizer, self.ctx.args
        batches = self._lookahead_batches()
        fork = TrainingFork(model, opt)
        try:
            factor = self._factor()
            for i, g in enumerate(opt.param_groups):
                g["lr"] = float(value[0]) * (self._shares[i] if i < len(self._shares) else 1.0) * factor
            device = model_device(model)
            model.train()
            opt.zero_grad(set_to_none=True)
            for batch in batches:
                with autocast_for(args, device):
                    out = model(**to_device(batch, device))
                loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
                if loss is None:
                    raise ConfigError("the lookahead batches have no labels: the model returns no loss to train on")
                loss.backward()
                clip = float(getattr(args, "max_grad_norm", 0.0) or 0.0)
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.params, clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            return self.ctx.score()
        finally:
            fork.restore()

    def describe(self) -> dict[str, Any]:
        return {"knob": "learning_rate", "lookahead_steps": self.lookahead_steps, "batch_size": self.batch_size}
