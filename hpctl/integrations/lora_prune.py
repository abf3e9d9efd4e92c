"""GRASP LoRA's knob on any peft LoRA model: one global magnitude-pruning ratio of the adapter's delta.

:class:`PeftDeltaAdapter` shows a peft model's adapter to the
:class:`~hpctl.integrations.pruner.GlobalMagnitudePruner` that grasp_lora uses too (views
sharing the adapter's own parameters); :class:`LoraPruneKnob` trains through the mask of the committed ratio and
probes candidates with masks that are undone bit for bit.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hpctl.errors import ConfigError, shorten
from hpctl.integrations.base import TrainerContext, TrainerKnob
from hpctl.integrations.delta import DeltaLinear, LowRank, linear_shape
from hpctl.integrations.peft_export import export_peft
from hpctl.integrations.pruner import GlobalMagnitudePruner
from hpctl.knob import Knob

__all__ = ["LoraPruneKnob", "PeftDeltaAdapter"]


class PeftDeltaAdapter:
    """A peft LoRA model's adapter seen as a :class:`~hpctl.integrations.delta.DeltaAdapter`.

    For every peft ``lora.Linear`` layer with the active adapter, a
    :class:`~hpctl.integrations.delta.DeltaLinear` *view* shares the layer's frozen
    base ``nn.Linear`` (or transformers' ``Conv1D``, GPT-2's layers, whose weight is stored
    transposed: peft's ``fan_in_fan_out``; the view works on it as ``(out, in)``) and the adapter's own ``lora_A``/``lora_B`` parameters (the ones the
    Trainer's optimizer updates; nothing is copied). The layer's ``forward`` is routed
    through the view while the pruner has set a mask or a probe weight on it, and is
    peft's own otherwise; the module tree and the state dict are unchanged, so the Trainer
    saves the peft adapter as usual. ``remove()`` gives the layers their own forward back.
    With LoRA dropout, training at a mask computes ``W x + (M * dW) dropout(x)``, as peft
    drops the adapter's input.
    """

    def __init__(self, model: nn.Module) -> None:
        from peft.tuners.lora import Linear as LoraLinear

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
                if linear_shape(layer.get_base_layer()) is None:
                    raise ConfigError(f"{name}: LoraPruneKnob needs nn.Linear or transformers Conv1D base layers "
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
            raise ConfigError("the model has no active peft LoRA adapter on Linear or Conv1D layers "
                              "(LoraPruneKnob prunes one)")
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
        for what, value in (("low", low), ("high", high)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise ConfigError(f"LoraPruneKnob: {what} must be a number (a pruning ratio), "
                                  f"got {shorten(repr(value))}")
        if not 0.0 <= low < high <= 1.0:
            raise ConfigError(f"pruning ratios need 0 <= low < high <= 1, got [{low}, {high}]")
        if groups is not None and (not isinstance(groups, Mapping) or not all(
                isinstance(m, (list, tuple)) and m and all(isinstance(x, str) for x in m) for m in groups.values())):
            raise ConfigError(f"LoraPruneKnob: groups must map a group name to module-name suffixes, e.g. "
                              f"{{'attn': ['q_proj', 'v_proj'], 'mlp': ['up_proj']}}, got {shorten(repr(groups))}")
        self.groups = {str(g): list(m) for g, m in groups.items()} if groups else None
        dim = len(self.groups) if self.groups else 1
        labels = tuple(f"{name}/{g}" for g in self.groups) if self.groups and dim > 1 else ()
        self.knob = Knob(name, float(low), float(high), default=default, dim=dim, labels=labels, units="fraction pruned")
        self.mask_every = mask_every
        self.ratio: np.ndarray | None = None
        self.adapter: PeftDeltaAdapter | None = None
        self.pruner = None
        self._indexed_at: int | None = None

    def _attach(self, model: nn.Module) -> tuple[PeftDeltaAdapter, GlobalMagnitudePruner]:
        adapter = PeftDeltaAdapter(model)
        try:
            return adapter, GlobalMagnitudePruner(adapter, self.groups)
        except BaseException:
            adapter.remove()
            raise

    def check(self, model: nn.Module) -> None:
        """A one-line ConfigError unless ``model`` has one plain float32 peft LoRA adapter on
        ``nn.Linear``/``Conv1D`` layers whose modules fit ``groups`` (the model is left as it was)."""
        if model is None:
            raise ConfigError("LoraPruneKnob needs the Trainer's model (a peft LoRA model)")
        if self.adapter is not None and self.adapter.model is model:
            return
        adapter, _ = self._attach(model)
        adapter.remove()

    def setup(self, ctx: TrainerContext) -> None:
        super().setup(ctx)
        if self.adapter is None:
            self.adapter, self.pruner = self._attach(ctx.model)

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
        (exact by default; ``rank=k``: a truncated SVD; see :func:`~hpctl.integrations.peft_export.export_peft`)."""
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
