"""A LoRA adapter as dense-delta wrappers: ``W + M * dW`` with trainable low-rank factors.

Shared by grasp_lora (its merged adapter) and the Trainer integration's
:class:`~hpctl.integrations.lora_prune.LoraPruneKnob` (views of a peft model's adapter);
:mod:`hpctl.integrations.pruner` sets the masks.

Where the mask lives: on the effective delta, kept dense
-----------------------------------------------------------
GRASP LoRA masks the merged adapter; masking its *effective delta*
``dW = (B * scale) @ A`` element-wise is what the design asks for, and ``M * dW`` is in
general full rank, so LoRA factors cannot hold it. Masking the factors instead would rank
entries of A (Kaiming-scale) against entries of B (near zero after short training) in one
list, which prunes B first for reasons unrelated to the delta's magnitude. So during the
controller and final phases the merged adapter lives in :class:`DeltaLinear` wrappers around
the frozen ``nn.Linear`` modules (:class:`DeltaAdapter`): the trainable parameters stay the
low-rank factors ``A``, ``B`` (a few MB to snapshot), and the forward pass uses
``F.linear(x, W + M * dW)`` through :class:`_MaskedDeltaLinear`, an autograd function that
forms that weight in two passes and keeps it for backward. On Gemma 3 270M the dense delta
of q/k/v/o over 18 layers is 29.5M entries (118 MB). A training step then pays what the
LoRA path pays plus the weight-gradient matmul of the masked layers and a few passes over
the dense delta: measured +5 % per step (batch 4 x 254 tokens, 2 threads), and +2 % more
when the masks are recomputed every step (``mask_every``). Without pruning (``dense=False``)
the layer runs the usual cheap LoRA path.

Masks never touch a parameter: they are separate tensors set on the wrappers by
:class:`hpctl.integrations.pruner.GlobalMagnitudePruner` and cleared again, so "apply,
evaluate, undo" is bit-exact by construction.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from hpctl.errors import ConfigError


__all__ = ["DeltaAdapter", "DeltaLinear", "LowRank", "linear_shape", "merged_into_copies"]


def _is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (GPT-2's linear layer: weight stored ``(in, out)``).

    Looked up in ``sys.modules``: a Conv1D instance exists only once transformers is imported,
    so this never imports it.
    """
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)


def linear_shape(module: nn.Module) -> tuple[int, int, bool] | None:
    """``(out_features, in_features, transposed)`` of a layer computing ``x W^T + b``, else None.

    ``nn.Linear`` stores ``W`` as ``(out, in)``; transformers' ``Conv1D`` (GPT-2) stores it
    transposed, ``(in, out)``, and computes ``x W + b`` (``transposed=True``).
    """
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features, False
    if _is_conv1d(module) and module.weight.dim() == 2:
        in_f, out_f = module.weight.shape
        return int(out_f), int(in_f), True
    return None


@dataclass
class LowRank:
    """One module's adapter: ``delta = B @ A * scale`` with ``A: (r, in)``, ``B: (out, r)``."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float

    def delta(self) -> torch.Tensor:
        return (self.B @ self.A) * self.scale

    def clone(self) -> "LowRank":
        return LowRank(self.A.detach().clone(), self.B.detach().clone(), float(self.scale))


class _MaskedDeltaLinear(torch.autograd.Function):
    """``F.linear(x, W + mask * (B*s) @ A)`` with gradients for ``A`` and ``B`` only, in as few passes as possible.

    Forward forms the effective weight (the delta's matmul, then ``W + M * dW`` in one
    ``addcmul`` pass) and keeps it for backward, where ``grad_x = grad_y @ W_eff`` and the weight
    gradient ``G = grad_y^T x`` is masked in place before the two thin matmuls that give the
    factors' gradients. Autograd through the same expression costs about five more passes
    over the dense delta per layer and step (measured: this is ~4 % of a Gemma 3 270M step).
    ``mask`` is a float 0/1 tensor or None (all kept).
    """

    @staticmethod
    def forward(ctx, x, A, B, weight, bias, mask, scale):  # noqa: D102 - see the class docstring
        Bs = B * scale
        w_eff = torch.mm(Bs, A)
        if mask is None:
            w_eff.add_(weight)
        else:
            w_eff = torch.addcmul(weight, mask, w_eff)  # W + M * dW in one pass
        if w_eff.dtype != weight.dtype:  # float32 factors on a bf16/fp16 backbone: round once, as the probes do
            w_eff = w_eff.to(weight.dtype)
        if w_eff.stride() != weight.stride():  # a Conv1D's transposed weight: the probes' layout, so the
            w_eff = torch.empty_like(weight).copy_(w_eff)  # matmul below is the probes', bit for bit
        ctx.save_for_backward(x, A, Bs, mask, w_eff)
        ctx.scale = scale
        return F.linear(x, w_eff, bias)

    @staticmethod
    def backward(ctx, grad_y):  # noqa: D102
        x, A, Bs, mask, w_eff = ctx.saved_tensors
        grad_x = grad_A = grad_B = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y.matmul(w_eff)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            g = grad_y.reshape(-1, grad_y.shape[-1])
            G = torch.mm(g.t(), x.reshape(-1, x.shape[-1]).to(g.dtype))  # dL/dW_eff: (out, in)
            if G.dtype != A.dtype:  # the factors' gradients in their own dtype (float32)
                G = G.to(A.dtype)
            if mask is not None:
                G.mul_(mask)
            if ctx.needs_input_grad[1]:
                grad_A = torch.mm(Bs.t(), G)
            if ctx.needs_input_grad[2]:
                grad_B = torch.mm(G, A.t()).mul_(ctx.scale)
        return grad_x, grad_A, grad_B, None, None, None, None


class DeltaLinear(nn.Module):
    """A frozen ``nn.Linear`` (or transformers' ``Conv1D``) plus a trainable low-rank delta that can be masked element-wise.

    Everything works on the weight as ``(out, in)``: :attr:`base_weight` is the base layer's
    weight in that layout (for a ``Conv1D``, whose weight is stored ``(in, out)``, a transposed
    view: no copy), so the delta ``B @ A * scale``, its masks and the effective weight have
    one layout for both kinds of layer (peft's ``fan_in_fan_out``).

    ``dense=False``: ``base(x) + (x @ A^T) @ B^T * scale`` (plain LoRA).
    ``dense=True``: ``F.linear(x, W + mask * ((B * scale) @ A))`` (``mask`` None = all kept;
    a float 0/1 tensor, or bool), through :class:`_MaskedDeltaLinear`.
    ``weight_override`` (set by :meth:`hpctl.integrations.pruner.GlobalMagnitudePruner.applied`,
    evaluation only): a precomputed effective weight used as is; it is bit-identical to the
    dense training path's.
    """

    def __init__(self, base: nn.Module, factors: LowRank) -> None:
        super().__init__()
        shape = linear_shape(base)
        if shape is None:
            raise ConfigError(f"a LoRA delta needs an nn.Linear or transformers Conv1D layer, got {type(base).__name__}")
        self.base = base
        #: the base weight is stored (in, out) (transformers' Conv1D)
        self.transposed = shape[2]
        # float32 factors (so float32 AdamW state) whatever the backbone's dtype, on the layer's device
        dev = base.weight.device
        self.lora_A = nn.Parameter(factors.A.detach().to(device=dev, dtype=torch.float32, copy=True))
        self.lora_B = nn.Parameter(factors.B.detach().to(device=dev, dtype=torch.float32, copy=True))
        self.scale = float(factors.scale)
        self.dense = False
        self.mask: torch.Tensor | None = None
        self.weight_override: torch.Tensor | None = None

    @property
    def base_weight(self) -> torch.Tensor:
        """The frozen base weight as ``(out, in)`` (a transposed view for a ``Conv1D``)."""
        w = self.base.weight
        return w.t() if self.transposed else w

    @property
    def in_features(self) -> int:
        return int(self.base_weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.base_weight.shape[0])

    def delta(self) -> torch.Tensor:
        return (self.lora_B * self.scale) @ self.lora_A

    def effective_weight(self, delta: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``W + mask * delta``: the expression training, probing and export all use."""
        d = self.delta() if delta is None else delta
        if mask is not None:
            d = d * mask
        return self.base_weight + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_override is not None:
            return F.linear(x, self.weight_override, self.base.bias)
        if self.dense:
            mask = self.mask
            if mask is not None and mask.dtype == torch.bool:
                mask = mask.to(self.lora_A.dtype)
            return _MaskedDeltaLinear.apply(x, self.lora_A, self.lora_B, self.base_weight, self.base.bias, mask,
                                            self.scale)
        return self.base(x) + F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scale

    def extra_repr(self) -> str:
        return (f"r={self.lora_A.shape[0]}, scale={self.scale:g}, dense={self.dense}"
                + (", transposed" if self.transposed else ""))


class DeltaAdapter:
    """The merged adapter installed as :class:`DeltaLinear` wrappers on a plain backbone.

    ``remove()`` puts the original ``nn.Linear`` modules back (their parameters were never
    written). Trainable parameters: ``lora_A``/``lora_B`` of every wrapper.
    """

    def __init__(self, model: nn.Module, factors: Mapping[str, LowRank]) -> None:
        self.model = model
        self.modules: dict[str, DeltaLinear] = {}
        self._originals: dict[str, nn.Module] = {}
        try:
            for name, fac in factors.items():
                parent, child = self._parent(name)
                orig = getattr(parent, child)
                shape = linear_shape(orig)
                if shape is None:
                    raise ConfigError(f"module {name!r} is {type(orig).__name__}, not a Linear layer")
                if tuple(fac.A.shape[1:]) != (shape[1],) or fac.B.shape[0] != shape[0]:
                    raise ConfigError(f"adapter factors for {name!r} do not fit the layer "
                                      f"({tuple(fac.B.shape)} @ {tuple(fac.A.shape)} vs {shape[:2]})")
                wrapped = DeltaLinear(orig, fac)
                setattr(parent, child, wrapped)
                self._originals[name] = orig
                self.modules[name] = wrapped
        except Exception:
            self.remove()
            raise

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() for p in (m.lora_A, m.lora_B)]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Clones of the factors, keyed ``name.lora_A`` / ``name.lora_B``."""
        out = {}
        for name, m in self.modules.items():
            out[f"{name}.lora_A"] = m.lora_A.detach().clone()
            out[f"{name}.lora_B"] = m.lora_B.detach().clone()
        return out

    def load_state_tensors(self, state: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, m in self.modules.items():
                m.lora_A.copy_(state[f"{name}.lora_A"])
                m.lora_B.copy_(state[f"{name}.lora_B"])

    def set_dense(self, dense: bool) -> None:
        for m in self.modules.values():
            m.dense = bool(dense)
            if not dense:
                m.mask = None

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """The original ``nn.Linear`` modules in place for the block, the wrappers (untouched) back after it.

        Another adapter can be installed on the plain backbone meanwhile (it must be removed
        before the block ends); the wrappers return also when the block raises.
        """
        for name, orig in self._originals.items():
            self._swap(name, orig)
        try:
            yield
        finally:
            for name, wrapped in self.modules.items():
                self._swap(name, wrapped)

    def remove(self) -> nn.Module:
        for name, orig in self._originals.items():
            self._swap(name, orig)
        self._originals.clear()
        self.modules.clear()
        return self.model

    def _parent(self, name: str) -> tuple[nn.Module, str]:
        """The module holding ``name`` and the attribute name there."""
        parent_name, _, child = name.rpartition(".")
        return (self.model.get_submodule(parent_name) if parent_name else self.model), child

    def _swap(self, name: str, module: nn.Module) -> None:
        parent, child = self._parent(name)
        setattr(parent, child, module)




@contextlib.contextmanager
def merged_into_copies(model: nn.Module, factors: Mapping[str, LowRank],
                       masks: Mapping[str, torch.Tensor] | None = None) -> Iterator[DeltaAdapter]:
    """``factors`` merged into copies of the adapted weights for the block (evaluation only).

    ``masks`` (keep-masks per module, ``(out, in)``): ``W + M * (B * scale) @ A`` instead, e.g.
    a run's exact pruned delta (:func:`hpctl.integrations.peft_export.load_pruned_delta`):
    the weights its evaluation used, bit for bit on the same machine.

    Every adapted layer runs one ``F.linear`` with ``W + (B * scale) @ A``, computed once in the
    factors' float32 and rounded to the backbone's dtype: the same arithmetic as the task's
    evaluation (:meth:`hpctl.integrations.pruner.GlobalMagnitudePruner.applied`), and exact for
    the saved identity-factor adapters (``I @ D = D``). A peft model with the adapter attached runs each
    adapted matmul twice (base and LoRA path); of a full-rank exported adapter, that doubles
    the cost. The backbone's own parameters are never written: the wrappers come out and the
    original layers are back after the block (also when it raises); meanwhile
    ``adapter.suspended()`` gives the plain backbone (e.g. to embed texts with it).
    """
    adapter = DeltaAdapter(model, factors)
    try:
        with torch.no_grad():
            for name, m in adapter.modules.items():
                mask = None if masks is None else masks.get(name)
                if mask is not None:
                    mask = mask.to(device=m.lora_A.device, dtype=m.lora_A.dtype)
                m.weight_override = m.effective_weight(mask=mask).to(m.base_weight.dtype)
        yield adapter
    finally:
        for m in adapter.modules.values():
            m.weight_override = None
        adapter.remove()
