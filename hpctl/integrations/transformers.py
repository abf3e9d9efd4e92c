"""hpctl inside a ``transformers.Trainer`` run: :class:`KnobCallback` and the knobs that ship with it.

::

    from hpctl.integrations.transformers import KnobCallback, LoraPruneKnob

    knob = LoraPruneKnob(high=0.9)                    # GRASP's global magnitude prune of the LoRA delta
    cb = KnobCallback(knob, eval_data=micro_dev, every_steps=10, controller="grpo",
                      budget=40, group_size=4, data_collator=collator)
    Trainer(model=peft_model, args=args, train_dataset=train, data_collator=collator,
            callbacks=[cb]).train()
    cb.session.learned                                # the learned ratio; training ended at it

Every ``every_steps`` optimizer steps (and once before the first) the callback pauses the
Trainer at that state (``on_step_end``: after the optimizer step, gradients zeroed),
scores the controller's group of values on ``eval_data`` and commits; training then
continues at the committed value. Scoring, by default, is the teacher-forced loss (the
model's own ``loss`` with the batch's ``labels``, weighted by label tokens; the score is
minus it); ``compute_metrics`` + ``metric`` (the Trainer's conventions) or a ``score``
function of the model replace it. Probes run in eval mode without gradients, and the
process-wide random generators are restored after every round, so the Trainer's own
random stream (dropout, data order) is the one it would have been without the callback.

The round is an :class:`hpctl.Session` (:mod:`hpctl.session`): the same controllers,
commit rules, guard, budget, MLflow records and run folder as ``hpctl run``. With
``report_to="mlflow"`` the callback logs into the Trainer's MLflow run (keys prefixed
``hpctl/`` and ``hpctl.``); otherwise it opens its own run. The session is saved into every
Trainer checkpoint (``checkpoint-N/hpctl_session.safetensors``), so
``trainer.train(resume_from_checkpoint=...)`` resumes the controller where that checkpoint
left it.

Knobs (a :class:`TrainerKnob` says how to set a value and how to probe one):

* :class:`LoraPruneKnob` - GRASP LoRA's global magnitude pruning of a peft LoRA model's
  delta ``dW = B A * scale`` at one ratio ranked across all adapted modules, with the
  grasp_lora pruner (:class:`hpctl.plugins.grasp_lora.pruner.GlobalMagnitudePruner`):
  masks are separate tensors, parameters are never written, a probe is undone bit for bit.
* :class:`LearningRateKnob` - the learning rate on a log scale. A probe forks the trainable
  state (the trainable parameters, their gradients, buffers, the optimizer state and
  the random generators), trains ``lookahead_steps`` steps at the candidate, scores, and
  restores all of it bit for bit.
* :class:`FunctionKnob` - any knob from two functions: ``apply(value)`` and
  ``probe(value) -> score``.

Cost: outside the probes the callback does a counter check per step, one controller round
(microseconds) per ``every_steps`` steps and, for a pruned LoRA, a mask refresh every
``mask_every`` steps; ``KnobCallback.seconds`` splits the time it took into ``probes``
and ``overhead`` (``benchmarks/trainer_callback.py`` measures it against training time).

This is the only module of hpctl that imports transformers.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import TrainerCallback

from hpctl.errors import ConfigError, HpctlError, ResumeError
from hpctl.knob import Knob
from hpctl.session import Session

__all__ = ["FunctionKnob", "KnobCallback", "LearningRateKnob", "LoraPruneKnob", "PeftDeltaAdapter", "TrainerKnob",
           "TrainingFork", "preserved_rng"]

#: the session's file inside a Trainer checkpoint folder
SESSION_FILE = "hpctl_session.safetensors"


# ------------------------------------------------------------------------ helpers ----
@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Python's, numpy's and torch's (CPU and initialised CUDA) global random states back after the block."""
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _collate(data: Sequence[Any], collator: Callable | None, batch_size: int) -> list[dict[str, Any]]:
    """``data`` (feature dicts, or a ``datasets.Dataset`` of them) as collated batches; text columns dropped."""
    if collator is None:
        from transformers import default_data_collator as collator
    rows = [data[i] for i in range(len(data))]
    if not rows:
        raise ConfigError("the evaluation data for the probes is empty")
    if not all(isinstance(r, Mapping) for r in rows):
        raise ConfigError(f"probe data must be feature dicts (input_ids, attention_mask, labels, ...), "
                          f"got {type(rows[0]).__name__}")
    rows = [{k: v for k, v in r.items() if not isinstance(v, str)} for r in rows]
    batches = []
    for i in range(0, len(rows), batch_size):
        try:
            batches.append(dict(collator(rows[i:i + batch_size])))
        except Exception as exc:  # noqa: BLE001 - a collator that cannot batch this data is a user error
            raise ConfigError(f"the data collator cannot batch the probe data: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return batches


def _autocast(args: Any, device: torch.device):
    if getattr(args, "bf16", False):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if getattr(args, "fp16", False):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


class Scorer:
    """The probe score of the model's current state on fixed batches (higher is better).

    Default: minus the teacher-forced loss (the model's ``loss`` for the batch's
    ``labels``), averaged over batches weighted by their label tokens; for a causal LM whose
    forward takes ``logits_to_keep`` it is computed with logits at the label positions only
    (the same cross-entropies, without the LM head's cost elsewhere). With
    ``compute_metrics`` (a function of a ``transformers.EvalPrediction`` returning a dict,
    as for the Trainer) the score is ``metrics[metric]`` (sign by ``greater_is_better``,
    default: lower is better when the name contains "loss"). With ``score`` (a function of
    the model) it is whatever that returns. Runs in eval mode without gradients; the
    model's train/eval mode is put back afterwards.
    """

    def __init__(self, batches: list[dict[str, Any]] | None, *, compute_metrics: Callable | None = None,
                 metric: str | None = None, greater_is_better: bool | None = None,
                 preprocess_logits_for_metrics: Callable | None = None, score: Callable | None = None,
                 args: Any = None) -> None:
        self.batches = batches or []
        self.compute_metrics = compute_metrics
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.preprocess = preprocess_logits_for_metrics
        self.score_fn = score
        self.args = args
        self._on: tuple[torch.device, list[dict[str, Any]]] | None = None

    def _batches_on(self, device: torch.device) -> list[dict[str, Any]]:
        if self._on is None or self._on[0] != device:
            self._on = (device, [_to_device(b, device) for b in self.batches])
        return self._on[1]

    def __call__(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.score_fn is not None:
                    return float(self.score_fn(model))
                device = _model_device(model)
                with _autocast(self.args, device):
                    if self.compute_metrics is not None:
                        return self._metric(model, device)
                    return -self._loss(model, device)
        finally:
            model.train(was_training)

    def _loss(self, model: nn.Module, device: torch.device) -> float:
        total, weight = 0.0, 0.0
        label_only = _takes_logits_to_keep(model)
        for batch in self._batches_on(device):
            labels = batch.get("labels")
            if label_only and torch.is_tensor(labels) and labels.dim() == 2:
                summed, n = _label_only_loss(model, batch)
                if summed is not None:
                    total += summed
                    weight += n
                    continue
            out = model(**batch)
            loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
            if loss is None:
                raise ConfigError("the probe data has no labels: the default probe score is the teacher-forced "
                                  "loss; give labels, or compute_metrics with metric, or score")
            labels = batch.get("labels")
            w = float((labels != -100).sum()) if torch.is_tensor(labels) else 1.0
            total += float(loss) * w
            weight += w
        return total / max(weight, 1e-12)

    def _metric(self, model: nn.Module, device: torch.device) -> float:
        from transformers import EvalPrediction
        from transformers.trainer_pt_utils import nested_concat, nested_numpify

        preds = labels = None
        for batch in self._batches_on(device):
            out = model(**batch)
            logits = out["logits"] if isinstance(out, Mapping) else out.logits
            lab = batch.get("labels")
            if self.preprocess is not None:
                logits = self.preprocess(logits, lab)
            preds = logits.detach() if preds is None else nested_concat(preds, logits.detach(), padding_index=-100)
            if lab is not None:
                labels = lab if labels is None else nested_concat(labels, lab, padding_index=-100)
        result = self.compute_metrics(EvalPrediction(predictions=nested_numpify(preds),
                                                     label_ids=None if labels is None else nested_numpify(labels)))
        key = self.metric
        if key is None:
            raise ConfigError("compute_metrics needs metric=<the key of its result to score by>")
        if key not in result and f"eval_{key}" in result:
            key = f"eval_{key}"
        if key not in result:
            raise ConfigError(f"compute_metrics returned no {self.metric!r} (it returned: {', '.join(sorted(result))})")
        higher = self.greater_is_better if self.greater_is_better is not None else "loss" not in key
        value = float(result[key])
        return value if higher else -value


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(type(base).forward).parameters
    except (TypeError, ValueError):
        return False


def _label_only_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[float | None, int]:
    """A causal LM's teacher-forced loss, summed over the label tokens, with logits at those positions only.

    The model's own ``loss`` averages the same cross-entropies (labels shifted by one, -100
    ignored) but computes logits everywhere, which for a 262k-token vocabulary is most of a
    probe's cost. Returns ``(None, 0)`` when the model does not give one logit row per label.
    """
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    targets = labels[:, 1:][keep[:, :-1]]
    if targets.numel() == 0:
        return 0.0, 0
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs, logits_to_keep=keep)
    logits = out["logits"] if isinstance(out, Mapping) else out.logits
    if logits.dim() != 2 or logits.shape[0] != targets.numel():
        return None, 0
    return float(F.cross_entropy(logits.float(), targets, reduction="sum")), int(targets.numel())


@dataclass
class TrainerContext:
    """What a knob may use: the Trainer's model, optimizer, scheduler and arguments, and the scorer."""

    model: nn.Module
    optimizer: Any
    lr_scheduler: Any
    args: Any
    scorer: Scorer
    train_dataloader: Any = None
    seed: int = 0
    step: int = 0  # the Trainer's global step now

    def score(self) -> float:
        """The probe score of the model's current state."""
        return self.scorer(self.model)


# -------------------------------------------------------------------------- knobs ----
class TrainerKnob(ABC):
    """A knob :class:`KnobCallback` can steer.

    ``knob`` (an :class:`hpctl.Knob`) must be set once :meth:`setup` returns. Values
    reach :meth:`apply` and :meth:`probe` as 1-d float arrays of length ``knob.dim``.
    Contract of :meth:`probe`: afterwards the training state (weights, optimizer, anything
    training reads) is bit for bit what it was, also when it raises.
    """

    knob: Knob

    def setup(self, ctx: TrainerContext) -> None:
        """Called once at the start of training (the model, optimizer and scheduler exist)."""
        self.ctx = ctx

    @abstractmethod
    def apply(self, value: np.ndarray) -> None:
        """Training continues at ``value``."""

    @abstractmethod
    def probe(self, value: np.ndarray) -> float:
        """Score ``value`` at the current training state (higher is better)."""

    def on_step_begin(self, step: int) -> None:
        """Called before every optimizer step (``step`` = the Trainer's global step)."""

    def describe(self) -> dict[str, Any]:
        """Parameters worth logging."""
        return {}


class FunctionKnob(TrainerKnob):
    """A knob from two functions: ``apply(value)`` sets it for training, ``probe(value) -> score``
    scores it at the current state (higher is better) and must leave the training state as it was.

    ``value`` is a float for a scalar knob, an array for a vector one.
    """

    def __init__(self, knob: Knob, apply: Callable[[Any], None], probe: Callable[[Any], float]) -> None:
        if not isinstance(knob, Knob):
            raise ConfigError(f"FunctionKnob needs an hpctl.Knob, got {type(knob).__name__}")
        if not callable(apply) or not callable(probe):
            raise ConfigError("FunctionKnob needs two functions: apply(value) and probe(value) -> score")
        self.knob, self._apply, self._probe = knob, apply, probe

    def _user(self, value: np.ndarray) -> Any:
        return float(value[0]) if self.knob.dim == 1 else np.asarray(value, dtype=np.float64).copy()

    def apply(self, value: np.ndarray) -> None:
        self._apply(self._user(value))

    def probe(self, value: np.ndarray) -> float:
        return float(self._probe(self._user(value)))


# ---------------------------------------------------------------- LoRA pruning ----
class PeftDeltaAdapter:
    """A peft LoRA model's adapter seen as grasp_lora's :class:`~hpctl.plugins.grasp_lora.delta.DeltaAdapter`.

    For every peft ``lora.Linear`` layer with the active adapter, a
    :class:`~hpctl.plugins.grasp_lora.delta.DeltaLinear` *view* shares the layer's frozen
    base ``nn.Linear`` and the adapter's own ``lora_A``/``lora_B`` parameters (the ones the
    Trainer's optimizer updates; nothing is copied). The layer's ``forward`` is routed
    through the view while the pruner has set a mask or a probe weight on it, and is
    peft's own otherwise; the module tree and the state dict are unchanged, so the Trainer
    saves the peft adapter as usual. ``remove()`` gives the layers their own forward back.
    With LoRA dropout, training at a mask computes ``W x + (M * dW) dropout(x)``, as peft
    drops the adapter's input.
    """

    def __init__(self, model: nn.Module) -> None:
        from peft.tuners.lora import Linear as LoraLinear

        from hpctl.plugins.grasp_lora.delta import DeltaLinear
        from hpctl.plugins.grasp_lora.lora import LowRank

        self.model = model
        self.modules: dict[str, DeltaLinear] = {}
        self._layers: dict[str, Any] = {}
        root = model.get_base_model() if hasattr(model, "get_base_model") else model
        adapter_names: set[str] = set()
        try:
            for name, layer in root.named_modules():
                if not isinstance(layer, LoraLinear):
                    continue
                active = [a for a in layer.active_adapters if a in layer.lora_A]
                if not active:
                    continue
                if len(active) > 1:
                    raise ConfigError(f"{name} has {len(active)} active LoRA adapters ({', '.join(active)}); "
                                      "LoraPruneKnob prunes one (merge them first, e.g. peft add_weighted_adapter "
                                      "with combination_type='cat')")
                a = active[0]
                adapter_names.add(a)
                if layer.merged:
                    raise ConfigError(f"{name}: the adapter is merged into the base weights; unmerge it first")
                if a in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(a, False):
                    raise ConfigError(f"{name}: LoraPruneKnob needs a plain LoRA adapter (not DoRA or another variant)")
                if getattr(layer, "fan_in_fan_out", False) or not isinstance(layer.get_base_layer(), nn.Linear):
                    raise ConfigError(f"{name}: LoraPruneKnob needs nn.Linear base layers "
                                      f"(got {type(layer.get_base_layer()).__name__})")
                A, B = layer.lora_A[a].weight, layer.lora_B[a].weight
                if A.dtype != torch.float32 or B.dtype != torch.float32:
                    raise ConfigError(f"{name}: LoraPruneKnob needs float32 LoRA factors, got {A.dtype}")
                view = DeltaLinear(layer.get_base_layer(), LowRank(A.detach(), B.detach(), float(layer.scaling[a])))
                view.lora_A, view.lora_B = A, B  # the adapter's own parameters, shared
                self.modules[name] = view
                self._layers[name] = layer
                self._route(layer, view, layer.lora_dropout[a])
        except BaseException:
            self.remove()
            raise
        if not self.modules:
            raise ConfigError("the model has no active peft LoRA adapter on Linear layers (LoraPruneKnob prunes one)")
        if len(adapter_names) > 1:
            self.remove()
            raise ConfigError(f"layers run different adapters ({', '.join(sorted(adapter_names))}); "
                              "LoraPruneKnob prunes one adapter")

    @staticmethod
    def _route(layer: nn.Module, view: nn.Module, dropout: nn.Module) -> None:
        original = type(layer).forward.__get__(layer)

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if layer.disable_adapters or args or kwargs or (view.weight_override is None and not view.dense):
                return original(x, *args, **kwargs)
            if view.weight_override is None and layer.training and not isinstance(dropout, nn.Identity) \
                    and getattr(dropout, "p", 0.0) > 0:
                delta = (view.lora_B * view.scale) @ view.lora_A
                if view.mask is not None:
                    delta = delta * view.mask.to(delta.dtype)
                return layer.base_layer(x) + F.linear(dropout(x).to(delta.dtype), delta).to(x.dtype)
            return view(x)

        layer.forward = forward  # an instance attribute: the module tree and state dict stay peft's

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() for p in (m.lora_A, m.lora_B)]

    def set_dense(self, dense: bool) -> None:
        for m in self.modules.values():
            m.dense = bool(dense)
            if not dense:
                m.mask = None

    def remove(self) -> nn.Module:
        """Peft's own forward back on every layer (the views are dropped)."""
        for layer in self._layers.values():
            layer.__dict__.pop("forward", None)
        self._layers.clear()
        self.modules.clear()
        return self.model


class LoraPruneKnob(TrainerKnob):
    """GRASP LoRA's knob on any peft LoRA model: one global magnitude-pruning ratio of the adapter's delta.

    The ratio prunes exactly ``round(ratio * N)`` of the ``N`` entries of ``dW = B A * scale``
    over all adapted modules together, the smallest ``|dW|`` first (``groups`` maps group
    names to module suffixes, e.g. ``{"attn": ["q_proj", "v_proj"], "mlp": [...]}``, for one
    ratio per group: a vector knob). Training at a ratio runs ``W + M * dW`` with the mask
    ``M`` recomputed from the current delta every ``mask_every`` steps; a probe evaluates
    the masked model and undoes it bit for bit (masks only; no parameter is ever written).
    After training the model keeps the mask of the learned ratio in its forward;
    :meth:`export` writes that pruned adapter in peft format, :meth:`remove` gives peft its
    own (unpruned) forward back.
    """

    def __init__(self, low: float = 0.0, high: float = 0.9, default: float = 0.0, *, name: str = "prune_ratio",
                 groups: Mapping[str, Sequence[str]] | None = None, mask_every: int = 4) -> None:
        if isinstance(mask_every, bool) or not isinstance(mask_every, int) or mask_every < 1:
            raise ConfigError(f"mask_every must be a positive integer, got {mask_every!r}")
        if not 0.0 <= low < high <= 1.0:
            raise ConfigError(f"pruning ratios need 0 <= low < high <= 1, got [{low}, {high}]")
        self.groups = {str(g): list(m) for g, m in groups.items()} if groups else None
        dim = len(self.groups) if self.groups else 1
        labels = tuple(f"{name}/{g}" for g in self.groups) if self.groups and dim > 1 else ()
        self.knob = Knob(name, float(low), float(high), default=default, dim=dim, labels=labels, units="fraction pruned")
        self.mask_every = mask_every
        self.ratio: np.ndarray | None = None
        self.adapter: PeftDeltaAdapter | None = None
        self.pruner = None
        self._indexed_at: int | None = None

    def setup(self, ctx: TrainerContext) -> None:
        from hpctl.plugins.grasp_lora.pruner import GlobalMagnitudePruner

        super().setup(ctx)
        if self.adapter is None:
            self.adapter = PeftDeltaAdapter(ctx.model)
            try:
                self.pruner = GlobalMagnitudePruner(self.adapter, self.groups)
            except BaseException:
                self.adapter.remove()
                raise

    def apply(self, value: np.ndarray) -> None:
        self.ratio = np.asarray(value, dtype=np.float64).copy()
        self._set_masks()

    def _fresh(self) -> None:
        """Forget the pruner's |dW| index once the Trainer has stepped since it was built.

        The pruner notices changed factors by their version counters, but the fused AdamW
        the Trainer uses by default (``adamw_torch_fused``) writes parameters without
        bumping them: the step counter is the reliable signal here.
        """
        if self._indexed_at != self.ctx.step:
            self.pruner.invalidate()
            self._indexed_at = self.ctx.step

    def _set_masks(self) -> None:
        self._fresh()
        if self.ratio is None or not np.any(self.ratio > 0):
            self.pruner.clear_training_masks()  # nothing pruned: peft's own LoRA forward
        else:
            self.pruner.set_training_masks(self.ratio)

    def on_step_begin(self, step: int) -> None:
        if self.ratio is not None and np.any(self.ratio > 0) and step % self.mask_every == 0:
            self._set_masks()

    def probe(self, value: np.ndarray) -> float:
        self._fresh()
        with self.pruner.applied(value):
            return self.ctx.score()

    def _need_pruner(self):
        if self.pruner is None:
            raise ConfigError("LoraPruneKnob is not set up (training has not started, or remove() was called)")
        return self.pruner

    def sparsity(self) -> dict[str, float]:
        """The fraction of the delta pruned at the training ratio (per group, and ``"all"``)."""
        self._need_pruner().invalidate()
        return self.pruner.sparsity(self.pruner.masks(self.ratio if self.ratio is not None else 0.0))

    def export(self, path: str | Path, *, rank: int | None = None) -> dict[str, float]:
        """Save the adapter pruned at the training ratio, ``M * dW``, as a peft LoRA folder
        (exact by default; ``rank=k``: a truncated SVD; see grasp_lora's ``export_peft``)."""
        from hpctl.plugins.grasp_lora.lora import export_peft

        self._need_pruner().invalidate()
        masks = self.pruner.masks(self.ratio if self.ratio is not None else 0.0)
        base = getattr(getattr(self.ctx.model, "config", None), "_name_or_path", None)
        return export_peft(self.adapter, path, masks=masks, rank=rank, base_model_name_or_path=base or None,
                           metadata={"prune_ratio": self.knob.to_dict(self.ratio if self.ratio is not None
                                                                       else self.knob.default_value)})

    def remove(self) -> None:
        """Peft's own forward back (the model trains and evaluates unpruned again)."""
        if self.adapter is not None:
            self.adapter.remove()
            self.adapter = None
            self.pruner = None

    def describe(self) -> dict[str, Any]:
        return {"knob": "lora_prune", "mask_every": self.mask_every, "groups": self.groups or "all",
                "modules": len(self.adapter.modules) if self.adapter else 0}


# ---------------------------------------------------------------- learning rate ----
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
            batches = _collate(rows, self.data_collator, self.batch_size)
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
            device = _model_device(model)
            model.train()
            opt.zero_grad(set_to_none=True)
            for batch in batches:
                with _autocast(args, device):
                    out = model(**_to_device(batch, device))
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


# --------------------------------------------------------------------- callback ----
class KnobCallback(TrainerCallback):
    """Steer ``knob`` during ``Trainer.train()`` with an hpctl controller (module docstring).

    Args:
        knob: a :class:`TrainerKnob` (:class:`LoraPruneKnob`, :class:`LearningRateKnob`,
            :class:`FunctionKnob`).
        eval_data: the probes' evaluation subset (feature dicts or a tokenised
            ``datasets.Dataset``: ``input_ids``, ``attention_mask``, ``labels``), collated
            with ``data_collator`` (default ``transformers.default_data_collator``) in
            batches of ``eval_batch_size`` (default the Trainer's eval batch size). Not
            needed with ``score``.
        every_steps: optimizer steps between two rounds (the first round is at step 0).
        controller, budget, group_size, seed, controller_config, commit_rule, reward,
            max_move: the :class:`hpctl.Session`'s.
        compute_metrics, metric, greater_is_better, preprocess_logits_for_metrics: score by
            a metric instead of the loss (see :class:`Scorer`).
        score: a function of the model returning the probe score (replaces the above).
        out_dir: the session's run folder (default ``<output_dir>/hpctl-<time>``).
        tracking_uri, experiment: the MLflow store and experiment of the session's own run
            (when the Trainer does not report to MLflow).
        resume: ``None`` (default): resume the session saved in the Trainer checkpoint the
            Trainer resumes from; ``False``: always start a fresh session; a path: resume
            that session checkpoint.

    After training, ``session`` holds the :class:`hpctl.Session` (``session.learned``,
    ``session.result``) and ``seconds`` the time spent in probes and in the rest of the
    callback.
    """

    def __init__(self, knob: TrainerKnob, eval_data: Sequence[Any] | None = None, *, every_steps: int = 10,
                 controller: str = "grpo", budget: int = 40, group_size: int = 4, seed: int = 0,
                 controller_config: dict[str, Any] | None = None, commit_rule: str = "best", reward: str = "score",
                 max_move: float = 1.0, data_collator: Callable | None = None, eval_batch_size: int | None = None,
                 compute_metrics: Callable | None = None, metric: str | None = None,
                 greater_is_better: bool | None = None, preprocess_logits_for_metrics: Callable | None = None,
                 score: Callable[[nn.Module], float] | None = None, out_dir: str | Path | None = None,
                 tracking_uri: str | None = None, experiment: str = "hpctl-trainer",
                 resume: bool | str | Path | None = None) -> None:
        if not isinstance(knob, TrainerKnob):
            raise ConfigError(f"knob must be a TrainerKnob (LoraPruneKnob, LearningRateKnob, FunctionKnob), "
                              f"got {type(knob).__name__}")
        if isinstance(every_steps, bool) or not isinstance(every_steps, int) or every_steps < 1:
            raise ConfigError(f"every_steps must be a positive integer, got {every_steps!r}")
        if score is None and eval_data is None and not isinstance(knob, FunctionKnob):
            raise ConfigError("KnobCallback needs eval_data (the probes' evaluation subset) or a score function")
        if score is not None and not callable(score):
            raise ConfigError("score must be a function of the model returning a number")
        if compute_metrics is not None and metric is None:
            raise ConfigError("compute_metrics needs metric=<the key of its result to score by>")
        if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
            raise ConfigError(f"eval_batch_size must be a positive integer, got {eval_batch_size!r}")
        self.knob = knob
        self.eval_data, self.data_collator, self.eval_batch_size = eval_data, data_collator, eval_batch_size
        self.every_steps = every_steps
        self.session_kwargs = dict(controller=controller, budget=budget, group_size=group_size, seed=seed,
                                   controller_config=controller_config, commit_rule=commit_rule, reward=reward,
                                   max_move=max_move)
        self.scoring = dict(compute_metrics=compute_metrics, metric=metric, greater_is_better=greater_is_better,
                            preprocess_logits_for_metrics=preprocess_logits_for_metrics, score=score)
        self.out_dir, self.tracking_uri, self.experiment, self.resume = out_dir, tracking_uri, experiment, resume
        self.session: Session | None = None
        self.ctx: TrainerContext | None = None
        #: wall seconds inside the callback: ``probes`` (scoring candidates), the recurring rest
        #: (``rounds``: the controller and committing; ``steps``: the per-step hooks, mask
        #: refreshes included; ``saves``: the session into Trainer checkpoints) and the one-time
        #: ``setup`` (MLflow run, probe batches) and ``finish`` (result, plot, uploads)
        self.seconds = dict.fromkeys(("probes", "rounds", "steps", "saves", "setup", "finish"), 0.0)
        self.rounds = 0
        self._losses: list[float] = []

    # -- setup ----------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None,
                       train_dataloader=None, **kwargs):
        t0 = time.perf_counter()
        batches = None
        if self.scoring["score"] is None and self.eval_data is not None:
            batches = _collate(self.eval_data, self.data_collator,
                               self.eval_batch_size or int(getattr(args, "per_device_eval_batch_size", 8)))
        scorer = Scorer(batches, args=args, **self.scoring)
        seed = int(self.session_kwargs["seed"])
        self.ctx = TrainerContext(model=model, optimizer=optimizer, lr_scheduler=lr_scheduler, args=args,
                                  scorer=scorer, train_dataloader=train_dataloader, seed=seed,
                                  step=int(state.global_step))
        self.knob.setup(self.ctx)
        resume = self._resume_path(args, state)
        run_id, uri = self._trainer_mlflow_run(args)
        out_dir = self.out_dir
        if out_dir is None and resume is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            out_dir = os.path.join(args.output_dir, f"hpctl-{stamp}")
        self.session = Session(self.knob.knob, out_dir=out_dir, steps_per_round=self.every_steps,
                               total_steps=int(state.max_steps) if state.max_steps and state.max_steps > 0 else None,
                               resume=resume if resume is not None else False,
                               tracking_uri=uri or self.tracking_uri, experiment=self.experiment,
                               mlflow_run_id=run_id, autosave=False, **self.session_kwargs)
        if resume is None:
            try:
                self.session.tracker.log_params({"trainer": {"every_steps": self.every_steps, **self.knob.describe()}})
            except HpctlError:
                pass
        self.seconds["setup"] += time.perf_counter() - t0
        if resume is None and state.global_step % self.every_steps == 0:
            self._round(state)  # the first round, at the starting state
        else:
            self.knob.apply(self.session._value.copy())  # resumed: training continues at the committed value

    def _resume_path(self, args, state) -> Path | None:
        if self.resume is False:
            return None
        if self.resume not in (None, True):
            return Path(self.resume)
        if state.global_step <= 0:
            return None
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / SESSION_FILE
        if not path.is_file():
            raise ResumeError(f"the Trainer resumes at step {state.global_step} but {str(path)!r} does not exist: "
                              "the controller cannot resume (pass resume=False to KnobCallback to start it afresh)")
        return path

    @staticmethod
    def _trainer_mlflow_run(args) -> tuple[str | None, str | None]:
        """The Trainer's active MLflow run when it reports to MLflow, else (None, None)."""
        report_to = getattr(args, "report_to", None) or []
        if isinstance(report_to, str):
            report_to = [report_to]
        if "mlflow" not in report_to and "all" not in report_to:
            return None, None
        import mlflow

        run = mlflow.active_run()
        if run is None:
            return None, None
        return run.info.run_id, mlflow.get_tracking_uri()

    # -- rounds ---------------------------------------------------------------------------
    def _round(self, state) -> None:
        s = self.session
        t0 = time.perf_counter()
        probe_s, finish_before = 0.0, s.finish_seconds
        self.ctx.step = int(state.global_step)
        with preserved_rng():
            if self._losses:
                s.report_loss(float(np.mean(self._losses)))
                self._losses.clear()
            for value in s.ask():
                t1 = time.perf_counter()
                score = self.knob.probe(np.atleast_1d(np.asarray(value, dtype=np.float64)))
                probe_s += time.perf_counter() - t1
                s.tell(value, score)
            self.knob.apply(np.atleast_1d(np.asarray(s.value, dtype=np.float64)))
        self.rounds += 1
        finishing = s.finish_seconds - finish_before  # the session finished in this round (result, plot)
        self.seconds["probes"] += probe_s
        self.seconds["finish"] += finishing
        self.seconds["rounds"] += time.perf_counter() - t0 - probe_s - finishing

    def on_step_begin(self, args, state, control, **kwargs):
        t0 = time.perf_counter()
        if self.ctx is not None:
            self.ctx.step = int(state.global_step)
        self.knob.on_step_begin(int(state.global_step))
        self.seconds["steps"] += time.perf_counter() - t0

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            self._losses.append(float(loss))

    def on_step_end(self, args, state, control, **kwargs):
        t0 = time.perf_counter()
        due = self.session is not None and not self.session.done and state.global_step % self.every_steps == 0
        self.seconds["steps"] += time.perf_counter() - t0
        if due:
            self._round(state)

    def on_save(self, args, state, control, **kwargs):
        if self.session is None:
            return
        t0 = time.perf_counter()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            self.session.save(folder / SESSION_FILE)
        self.seconds["saves"] += time.perf_counter() - t0

    def on_train_end(self, args, state, control, **kwargs):
        s = self.session
        if s is None:
            return
        if not s.done:
            s.tracker.metrics({f"callback/{k}_s": v for k, v in self.seconds.items()}, s.probes)
            s.finish()  # training is over: the learned value is the one it ended at
            self.seconds["finish"] += s.finish_seconds
        from hpctl.rundir import atomic_write_json

        atomic_write_json(s.out_dir / "callback.json", {"rounds": self.rounds, "every_steps": self.every_steps,
                                                         "seconds": self.seconds, "steps": int(state.global_step)})
