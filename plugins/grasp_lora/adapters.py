"""LoRA adapters for GRASP LoRA: train, save/load (peft format), merge, and prune globally.

Pipeline pieces, in the order GRASP LoRA uses them:

1. **Train** a *source* and a *target* adapter with peft (:func:`attach_lora`,
   :func:`train_lora`): plain AdamW on the summed answer-token loss, same target modules
   for both (:class:`LoraSpec`; default the attention ``q/k/v/o`` projections, add
   ``gate/up/down`` for the per-group knob).
2. **Save/load** them in peft format (:func:`save_lora`, :func:`load_lora`):
   ``PeftModel.from_pretrained`` loads what is saved.
3. **Merge** (:func:`merge_adapters`) with peft's ``add_weighted_adapter(...,
   combination_type="cat")``: concatenating ``w_i * s_i * A_i`` and ``B_i`` gives an adapter
   whose delta is *exactly* ``sum_i w_i * s_i * B_i @ A_i`` (rank ``sum r_i``, scale 1).
   Rules: ``sum`` (w = 1, 1), ``mean`` (1/n each), ``weighted`` (given weights),
   ``target_only`` / ``source_only`` (one adapter, unchanged).
4. **Prune** the merged adapter by global magnitude (:class:`GlobalMagnitudePruner`).

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

Masks never touch a parameter: they are separate tensors set on the wrappers and cleared
in a ``finally`` (:meth:`GlobalMagnitudePruner.applied`), so "apply, evaluate, undo" is
bit-exact by construction, also when the evaluation raises. The threshold is global: one
ranking of ``|dW|`` over all modules of a group (``groups={"attn": [...], "mlp": [...]}``
gives one ratio per group). Per training state one pass builds a radix histogram of the
float32 bit patterns of ``|dW|`` (47 ms for Gemma 3 270M's 29.5M entries); each ratio then
needs ``kthvalue`` only over the entries of one histogram bucket (about 29 ms to gather,
instead of 0.35-0.47 s for a ``kthvalue`` over everything or 2.7 s for a sort) and four
branch-free integer passes that turn the threshold into the probe's weights (about 36 ms;
see :class:`GlobalMagnitudePruner`). A probe's prune+restore is therefore a fixed ~65 ms
on that adapter whatever the micro-dev size, while its forward grows with the micro-dev
(about 0.2 s per example there). Exactly ``round(rho * N)`` entries are pruned; ties at
the threshold (common: float32 magnitudes repeat) are broken in module order, row-major.

Saving the pruned adapter (:func:`export_peft`)
-----------------------------------------------
The final adapter is saved in peft LoRA format, exactly by default: each module's
``M * dW`` (out x in) becomes a LoRA of rank ``min(out, in)`` with an identity factor
(``B = I, A = M*dW`` or ``A = I, B = M*dW``; per-module ``rank_pattern``, ``alpha = r``
so the scale is 1). ``PeftModel.from_pretrained`` then reproduces the in-memory model up
to float rounding (tested to 1e-4 relative on logits). The file is larger than the dense
delta (about 180 MB for Gemma 3 270M q/k/v/o); ``rank=k`` instead stores a truncated SVD of
rank k per module and reports its relative Frobenius error.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hpctl.errors import ConfigError, one_line
from hpctl.plugins.grasp_lora.fsutil import replacing_folder
from hpctl.plugins.grasp_lora.lm import Batch, Encoded, PassCounter, answer_loss, collate, length_batches

ATTN_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
MERGE_RULES: tuple[str, ...] = ("sum", "mean", "weighted", "target_only", "source_only")
_HIST_BITS = 16  # the histogram keys on the top 16 bits of the float32 pattern of |dW|


# --------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class LoraSpec:
    """Shape of the source and target adapters (identical for both)."""

    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ATTN_TARGETS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ConfigError("LoRA needs at least one target module")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=list(self.targets),
                          lora_dropout=self.dropout, bias="none", task_type="CAUSAL_LM")


def parse_targets(text: str) -> tuple[str, ...]:
    """``"attn"``, ``"mlp"``, ``"attn+mlp"`` or a comma list of module names (``q_proj,v_proj``)."""
    out: list[str] = []
    for part in re.split(r"[+,\s]+", text.strip()):
        if not part:
            continue
        if part == "attn":
            out.extend(ATTN_TARGETS)
        elif part == "mlp":
            out.extend(MLP_TARGETS)
        else:
            out.append(part)
    if not out:
        raise ConfigError(f"no LoRA target modules in {text!r}")
    return tuple(dict.fromkeys(out))


def target_linears(model: nn.Module, targets: Sequence[str]) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` whose last name component is in ``targets``."""
    wanted = set(targets)
    found = {name: mod for name, mod in model.named_modules()
             if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in wanted}
    if not found:
        raise ConfigError(f"the backbone has no linear modules named {', '.join(sorted(wanted))}")
    return found


# --------------------------------------------------------------------------- low-rank factors
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


Factors = dict[str, LowRank]


def _lora_layers(model: nn.Module, name: str) -> Iterator[tuple[str, Any]]:
    """(module name relative to the backbone, peft LoraLayer) holding adapter ``name``."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    root = model.base_model.model if isinstance(model, PeftModel) else model
    for mod_name, mod in root.named_modules():
        if isinstance(mod, LoraLayer) and name in getattr(mod, "lora_A", {}):
            yield mod_name, mod


def lora_factors(model: nn.Module, name: str) -> Factors:
    """Copies of adapter ``name``'s factors per module (names relative to the backbone)."""
    out = {mod_name: LowRank(layer.lora_A[name].weight.detach().clone(), layer.lora_B[name].weight.detach().clone(),
                             float(layer.scaling[name]))
           for mod_name, layer in _lora_layers(model, name)}
    if not out:
        raise ConfigError(f"no LoRA adapter named {name!r} in the model")
    return out


def lora_deltas(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The effective delta ``B @ A * scale`` per module of adapter ``name``."""
    with torch.no_grad():
        return {k: f.delta() for k, f in lora_factors(model, name).items()}


# --------------------------------------------------------------------------- peft adapters
@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """Silence the FutureWarning peft 0.21 triggers through a transformers 5.x API it still calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def attach_lora(model: nn.Module, name: str, spec: LoraSpec):
    """Add a fresh LoRA adapter ``name`` (a PeftModel is created around a plain backbone)."""
    from peft import PeftModel, get_peft_model

    with _quiet_peft():
        if isinstance(model, PeftModel):
            model.add_adapter(name, spec.peft_config())
            return model
        return get_peft_model(model, spec.peft_config(), adapter_name=name)


def load_lora(model: nn.Module, path: str | Path, name: str, *, trainable: bool = False):
    """Load a peft adapter folder as adapter ``name``; ConfigError if it is not one."""
    from peft import PeftModel

    p = Path(path).expanduser()
    if not (p / "adapter_config.json").is_file():
        raise ConfigError(f"adapter {str(p)!r} is not a peft adapter folder (no adapter_config.json)")
    try:
        with _quiet_peft():
            if isinstance(model, PeftModel):
                model.load_adapter(str(p), adapter_name=name, is_trainable=trainable)
                return model
            return PeftModel.from_pretrained(model, str(p), adapter_name=name, is_trainable=trainable)
    except Exception as exc:  # noqa: BLE001 - any failure: this folder does not fit this backbone
        raise ConfigError(f"adapter {str(p)!r} cannot be loaded on this backbone: {one_line(exc)}") from None


def save_lora(model: nn.Module, name: str, path: str | Path) -> Path:
    """Save adapter ``name`` in peft format directly in ``path`` (replacing it)."""
    dest = Path(path)
    with replacing_folder(dest) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=[name])
        if (tmp / name / "adapter_config.json").is_file():  # peft nests non-default adapters in a subfolder
            for item in (tmp / name).iterdir():
                shutil.move(str(item), str(tmp / item.name))
            (tmp / name).rmdir()
    return dest


def unload_lora(model: nn.Module) -> nn.Module:
    """The plain backbone back from a PeftModel (LoRA layers removed, nothing merged)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.unload()
    return model


def merge_adapters(model: nn.Module, names: Sequence[str], rule: str = "sum", *,
                   weights: Sequence[float] | None = None, new_name: str = "merged") -> str:
    """Add adapter ``new_name`` = the merge of ``names`` (``[source, target]``) under ``rule``.

    Every rule uses peft's ``add_weighted_adapter(combination_type="cat")``, which is exact:
    the new delta per module is ``sum_i w_i * delta_i``.
    """
    names = list(names)
    if rule not in MERGE_RULES:
        raise ConfigError(f"unknown merge rule {rule!r} (choose from {', '.join(MERGE_RULES)})")
    if rule == "sum":
        use, w = names, [1.0] * len(names)
    elif rule == "mean":
        use, w = names, [1.0 / len(names)] * len(names)
    elif rule == "weighted":
        if weights is None or len(weights) != len(names):
            raise ConfigError(f"merge rule 'weighted' needs {len(names)} weights, got {weights!r}")
        use, w = names, [float(x) for x in weights]
    elif rule == "target_only":
        use, w = names[-1:], [1.0]
    else:
        use, w = names[:1], [1.0]
    if new_name in model.peft_config:
        model.delete_adapter(new_name)
    model.add_weighted_adapter(use, w, new_name, combination_type="cat")
    return new_name


# --------------------------------------------------------------------------- training
class DataOrder:
    """Endless length-bucketed training batches with a restorable RNG (snapshot-friendly)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        if not lengths:
            raise ConfigError("no training examples")
        self.lengths = list(lengths)
        self.batch_size = int(batch_size)
        self.rng = random.Random(seed)
        self.epoch: list[list[int]] = []
        self.pos = 0

    def next(self) -> list[int]:
        if self.pos >= len(self.epoch):
            self.epoch = length_batches(self.lengths, self.batch_size, self.rng)
            self.pos = 0
        batch = self.epoch[self.pos]
        self.pos += 1
        return batch

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "epoch": [list(b) for b in self.epoch], "pos": self.pos}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.rng.setstate(state["rng"])
        self.epoch = [list(b) for b in state["epoch"]]
        self.pos = int(state["pos"])


def adamw_step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], *,
               grad_clip: float | None, counter: PassCounter | None = None) -> float:
    """One optimizer step on the mean answer-token loss of ``batch``; returns that loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = answer_loss(model, batch, counter) / max(1, batch.n_labels)
    loss.backward()
    if counter is not None:
        counter.backward += 1
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def train_lora(model: nn.Module, name: str, data: Sequence[Encoded], *, steps: int, lr: float, batch_size: int,
               pad_id: int, seed: int, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
               counter: PassCounter | None = None,
               on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train peft adapter ``name`` alone for ``steps`` AdamW steps; returns the loss per step."""
    model.set_adapter(name)
    params = [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    if not params:
        raise ConfigError(f"adapter {name!r} has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    order = DataOrder([len(e.ids) for e in data], batch_size, seed)
    losses = []
    for step in range(int(steps)):
        batch = collate([data[i] for i in order.next()], pad_id)
        losses.append(adamw_step(model, batch, optimizer, params, grad_clip=grad_clip, counter=counter))
        if on_step is not None:
            on_step(step, losses[-1])
    for p in params:
        p.requires_grad_(False)
    return losses


# --------------------------------------------------------------------------- dense-delta wrappers
_ONE_F32_BITS = 0x3F800000  # the bit pattern of 1.0f
_LITTLE_ENDIAN = sys.byteorder == "little"


def _int_view(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bits as a signed integer tensor of the same element size (float32 -> int32, bf16 -> int16)."""
    return t.view({4: torch.int32, 2: torch.int16, 8: torch.int64}[t.element_size()])


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
    """A frozen ``nn.Linear`` plus a trainable low-rank delta that can be masked element-wise.

    ``dense=False``: ``base(x) + (x @ A^T) @ B^T * scale`` (plain LoRA).
    ``dense=True``: ``F.linear(x, W + mask * ((B * scale) @ A))`` (``mask`` None = all kept;
    a float 0/1 tensor, or bool), through :class:`_MaskedDeltaLinear`.
    ``weight_override`` (set by :meth:`GlobalMagnitudePruner.applied`, evaluation only): a
    precomputed effective weight used as is; it is bit-identical to the dense training path's.
    """

    def __init__(self, base: nn.Linear, factors: LowRank) -> None:
        super().__init__()
        self.base = base
        # float32 factors (so float32 AdamW state) whatever the backbone's dtype, on the layer's device
        dev = base.weight.device
        self.lora_A = nn.Parameter(factors.A.detach().to(device=dev, dtype=torch.float32, copy=True))
        self.lora_B = nn.Parameter(factors.B.detach().to(device=dev, dtype=torch.float32, copy=True))
        self.scale = float(factors.scale)
        self.dense = False
        self.mask: torch.Tensor | None = None
        self.weight_override: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta(self) -> torch.Tensor:
        return (self.lora_B * self.scale) @ self.lora_A

    def effective_weight(self, delta: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``W + mask * delta``: the expression training, probing and export all use."""
        d = self.delta() if delta is None else delta
        if mask is not None:
            d = d * mask
        return self.base.weight + d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight_override is not None:
            return F.linear(x, self.weight_override, self.base.bias)
        if self.dense:
            mask = self.mask
            if mask is not None and mask.dtype == torch.bool:
                mask = mask.to(self.lora_A.dtype)
            return _MaskedDeltaLinear.apply(x, self.lora_A, self.lora_B, self.base.weight, self.base.bias, mask,
                                            self.scale)
        return self.base(x) + F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scale

    def extra_repr(self) -> str:
        return f"r={self.lora_A.shape[0]}, scale={self.scale:g}, dense={self.dense}"


class DeltaAdapter:
    """The merged adapter installed as :class:`DeltaLinear` wrappers on a plain backbone.

    ``remove()`` puts the original ``nn.Linear`` modules back (their parameters were never
    written). Trainable parameters: ``lora_A``/``lora_B`` of every wrapper.
    """

    def __init__(self, model: nn.Module, factors: Mapping[str, LowRank]) -> None:
        self.model = model
        self.modules: dict[str, DeltaLinear] = {}
        self._originals: dict[str, nn.Linear] = {}
        try:
            for name, fac in factors.items():
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                orig = getattr(parent, child)
                if not isinstance(orig, nn.Linear):
                    raise ConfigError(f"module {name!r} is {type(orig).__name__}, not a Linear layer")
                if tuple(fac.A.shape[1:]) != (orig.in_features,) or fac.B.shape[0] != orig.out_features:
                    raise ConfigError(f"adapter factors for {name!r} do not fit the layer "
                                      f"({tuple(fac.B.shape)} @ {tuple(fac.A.shape)} vs {tuple(orig.weight.shape)})")
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

    def factors(self) -> Factors:
        return {name: LowRank(m.lora_A.detach().clone(), m.lora_B.detach().clone(), m.scale)
                for name, m in self.modules.items()}

    def set_dense(self, dense: bool) -> None:
        for m in self.modules.values():
            m.dense = bool(dense)
            if not dense:
                m.mask = None

    def remove(self) -> nn.Module:
        for name, orig in self._originals.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            setattr(parent, child, orig)
        self._originals.clear()
        self.modules.clear()
        return self.model


# --------------------------------------------------------------------------- global pruning
@dataclass
class _StateIndex:
    """|dW| of one training state, prepared for fast exact global thresholds.

    The tensors live in buffers the pruner reuses from state to state (no fresh page faults
    per state); an index is only valid until the next one is built.
    """

    key: tuple
    delta: dict[str, torch.Tensor]
    bits: dict[str, torch.Tensor]  # |dW| float32 bit patterns as int32 (monotone in |dW|)
    hi: dict[str, torch.Tensor]  # top bits (histogram bucket) as int16
    cum: dict[str, torch.Tensor]  # per group: cumulative bucket counts
    total: dict[str, int]
    #: bits of W XOR bits of (W + dW) per module, built on the state's first probe
    xor: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Threshold:
    """Where group ``group`` is cut: entries with bits < ``bits`` are pruned, plus the first
    ``ties`` entries (module order, row-major) equal to it; ``prune_all``/``keep_all`` edges."""

    group: str
    k: int
    total: int
    bits: int = 0
    ties: int = 0
    n_equal: int = 0
    keep_all: bool = False
    prune_all: bool = False
    #: entries equal to the threshold, per module that has any
    equal_in: dict[str, int] = field(default_factory=dict)


class _BoolMasks(Mapping[str, "torch.Tensor | None"]):
    """Keep-masks (bool, None = all kept) as a read-only mapping, converted from select words on access."""

    def __init__(self, selects: Mapping[str, torch.Tensor | None]) -> None:
        self._selects = selects
        self._cache: dict[str, torch.Tensor | None] = {}

    def __getitem__(self, name: str) -> torch.Tensor | None:
        if name not in self._cache:
            sel = self._selects[name]
            self._cache[name] = None if sel is None else sel.ne(0)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._selects)

    def __len__(self) -> int:
        return len(self._selects)


class GlobalMagnitudePruner:
    """Global magnitude pruning of a :class:`DeltaAdapter`'s effective deltas.

    ``groups`` maps a group name to module-name suffixes (``"q_proj"``) or full module
    names; every module must fall in exactly one group. Default: one group ``"all"``. A
    ratio is a scalar (all groups) or one value per group (in ``groups`` order). For each
    group, exactly ``round(ratio * N_group)`` entries of ``|dW|`` (the smallest, ranked over
    all modules of the group together) are pruned.

    How a ratio becomes weights, without a sort and without a data-dependent branch per entry
    (``torch.where`` with a random mask runs at a third of memory speed on CPUs, branch
    mispredictions): per module a *select word* ``s = (t - bits) >> 31`` (arithmetic shift:
    ``-1`` where ``|dW| > t``, else ``0``), then the probe weight ``W_eff = bits(W) ^ (s &
    (bits(W) ^ bits(W + dW)))`` (the XOR term is built once per training state) and the
    training mask ``s & bits(1.0f)`` read as float32 (1.0 kept, 0.0 pruned). Both are the
    bit patterns ``W + M * dW`` has, so probing and training see the same weights.
    """

    def __init__(self, adapter: DeltaAdapter, groups: Mapping[str, Sequence[str]] | None = None) -> None:
        self.adapter = adapter
        names = list(adapter.modules)
        if not groups:
            groups = {"all": names}
        self.group_names = tuple(groups)
        self.members: dict[str, list[str]] = {g: [] for g in groups}
        for name in names:
            hits = [g for g, pats in groups.items()
                    if any(name == p or name.rsplit(".", 1)[-1] == p for p in pats)]
            if len(hits) != 1:
                raise ConfigError(f"module {name!r} belongs to {len(hits)} pruning groups (need exactly one): "
                                  f"{', '.join(f'{g}={list(p)}' for g, p in groups.items())}")
            self.members[hits[0]].append(name)
        empty = [g for g, m in self.members.items() if not m]
        if empty:
            raise ConfigError(f"pruning group {empty[0]!r} matches no adapter module")
        self._index: _StateIndex | None = None
        self.index_builds = 0
        # reused buffers (no fresh page faults per state or probe): the state index, the probes'
        # select words and effective weights, the training masks
        self._state_buffers: dict[str, dict[str, torch.Tensor]] = {}
        self._probe_selects: dict[str, torch.Tensor] = {}
        self._weight_buffers: dict[str, torch.Tensor] = {}
        self._train_selects: dict[str, torch.Tensor] = {}
        self._applied_depth = 0

    # -- state index ------------------------------------------------------------------
    def _state_key(self) -> tuple:
        return tuple((p._version, p.data_ptr()) for p in self.adapter.parameters())

    def invalidate(self) -> None:
        """Forget the cached index (the factors changed)."""
        self._index = None

    def _buffer(self, name: str, kind: str, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        bufs = self._state_buffers.setdefault(name, {})
        buf = bufs.get(kind)
        if buf is None or buf.shape != like.shape or buf.dtype != dtype or buf.device != like.device:
            buf = bufs[kind] = torch.empty(like.shape, dtype=dtype, device=like.device)
        return buf

    def index(self) -> _StateIndex:
        """The index of the current factors (rebuilt when any factor changed)."""
        key = self._state_key()
        if self._index is not None and self._index.key == key:
            return self._index
        self._index = None
        delta, bits, hi, cum, total = {}, {}, {}, {}, {}
        nbins = 1 << (31 - _HIST_BITS)
        with torch.no_grad():
            for g, members in self.members.items():
                counts = None
                n = 0
                for name in members:
                    m = self.adapter.modules[name]
                    d = self._buffer(name, "delta", m.base.weight, m.lora_A.dtype)
                    torch.mm(m.lora_B * m.scale, m.lora_A, out=d)  # = m.delta(), into the reused buffer
                    a = self._buffer(name, "abs", d, torch.float32)
                    torch.abs(d, out=a)
                    b = a.view(torch.int32)  # |dW| >= 0: its float32 bits order like its values
                    h = self._buffer(name, "hi", d, torch.int16)
                    if _LITTLE_ENDIAN and _HIST_BITS == 16:  # the high int16 half of each int32, no temporary
                        h.copy_(b.view(torch.int16)[..., 1::2])
                    else:
                        h.copy_(b >> _HIST_BITS)
                    c = torch.bincount(h.reshape(-1), minlength=nbins)
                    counts = c if counts is None else counts.add_(c)
                    delta[name], bits[name], hi[name] = d, b, h
                    n += d.numel()
                cum[g] = counts.cumsum(0)
                total[g] = n
        self._index = _StateIndex(key, delta, bits, hi, cum, total)
        self.index_builds += 1
        return self._index

    # -- thresholds and masks -----------------------------------------------------------
    def ratios(self, ratio: float | Sequence[float] | np.ndarray) -> dict[str, float]:
        arr = np.asarray(ratio, dtype=np.float64).reshape(-1)
        if arr.size == 1:
            arr = np.full(len(self.group_names), float(arr[0]))
        if arr.size != len(self.group_names):
            raise ConfigError(f"{arr.size} pruning ratios for {len(self.group_names)} groups {self.group_names}")
        if np.any(~np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
            raise ConfigError(f"pruning ratios must be in [0, 1], got {arr.tolist()}")
        return dict(zip(self.group_names, arr.tolist()))

    def threshold(self, group: str, ratio: float) -> Threshold:
        """The exact cut of ``group`` at ``ratio`` for the current state."""
        idx = self.index()
        total = idx.total[group]
        k = int(round(ratio * total))
        if k <= 0:
            return Threshold(group, 0, total, keep_all=True)
        if k >= total:
            return Threshold(group, total, total, prune_all=True)
        cum = idx.cum[group]
        bucket = int(torch.searchsorted(cum, torch.tensor([k], dtype=cum.dtype, device=cum.device)).item())
        below = int(cum[bucket - 1]) if bucket > 0 else 0
        per_module = [(n, idx.bits[n][idx.hi[n] == bucket]) for n in self.members[group]]
        vals = torch.cat([v for _, v in per_module])
        t = int(torch.kthvalue(vals.cpu(), k - below).values)
        n_less = below + int((vals < t).sum())
        equal_in = {n: c for n, v in per_module if v.numel() and (c := int((v == t).sum()))}
        return Threshold(group, k, total, bits=t, ties=k - n_less, n_equal=sum(equal_in.values()),
                         equal_in=equal_in)

    def _selects(self, ratio: float | Sequence[float] | np.ndarray,
                 buffers: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor | None]:
        """Select words per module (int32: -1 kept, 0 pruned; None = all kept) at ``ratio``.

        Written into ``buffers`` (a dict filled on first use) when given, else fresh tensors.
        """
        idx = self.index()
        out: dict[str, torch.Tensor | None] = {}
        for g, r in self.ratios(ratio).items():
            th = self.threshold(g, r)
            ties_left = th.ties
            t = torch.tensor(th.bits, dtype=torch.int32, device=next(iter(idx.bits.values())).device)
            for name in self.members[g]:
                if th.keep_all:
                    out[name] = None
                    continue
                bits = idx.bits[name]
                buf = None if buffers is None else buffers.get(name)
                if buf is None or buf.shape != bits.shape or buf.device != bits.device:
                    buf = torch.empty_like(bits)
                    if buffers is not None:
                        buffers[name] = buf
                out[name] = buf
                if th.prune_all:
                    buf.zero_()
                    continue
                torch.sub(t, bits, out=buf)  # < 0 exactly where bits > t (no overflow: both in [0, 2^31))
                buf.bitwise_right_shift_(31)  # arithmetic: -1 kept, 0 pruned
                n_eq = th.equal_in.get(name, 0)
                if n_eq and th.ties < th.n_equal:  # prune only the first `ties` equal entries of the group
                    eq = bits == th.bits
                    if ties_left <= 0:
                        buf.masked_fill_(eq, -1)
                    elif ties_left < n_eq:
                        flat_eq = eq.reshape(-1)
                        rank = flat_eq.cumsum(0)  # 1-based order of the equal entries
                        buf.view(-1).masked_fill_(flat_eq & (rank > ties_left), -1)
                    ties_left -= n_eq
        return out

    def masks(self, ratio: float | Sequence[float] | np.ndarray) -> dict[str, torch.Tensor | None]:
        """Keep-masks per module (bool; None = keep everything) at ``ratio`` for the current state."""
        return {name: None if s is None else s.ne(0) for name, s in self._selects(ratio, None).items()}

    def sparsity(self, masks: Mapping[str, torch.Tensor | None]) -> dict[str, float]:
        """Fraction pruned per group and overall (``"all"`` key when there are several groups)."""
        res, tot_p, tot_n = {}, 0, 0
        for g, members in self.members.items():
            p = n = 0
            for name in members:
                m = masks.get(name)
                size = self.adapter.modules[name].lora_B.shape[0] * self.adapter.modules[name].lora_A.shape[1]
                n += size
                p += 0 if m is None else size - int(m.sum())
            res[g] = p / max(1, n)
            tot_p, tot_n = tot_p + p, tot_n + n
        if len(self.members) > 1:
            res["all"] = tot_p / max(1, tot_n)
        return res

    # -- applying -------------------------------------------------------------------------
    def set_training_masks(self, ratio: float | Sequence[float] | np.ndarray) -> dict[str, torch.Tensor | None]:
        """Train through ``W + M(ratio) * dW`` (masks from the current state); returns the float 0/1 masks.

        The masks live in buffers the next call overwrites (after the step that used them).
        """
        with torch.no_grad():
            selects = self._selects(ratio, self._train_selects)
            masks: dict[str, torch.Tensor | None] = {}
            for name, m in self.adapter.modules.items():
                s = selects[name]
                if s is not None:
                    if m.lora_A.dtype == torch.float32:
                        s = s.bitwise_and_(_ONE_F32_BITS).view(torch.float32)  # 1.0f kept, 0.0f pruned
                    else:
                        s = s.ne(0).to(m.lora_A.dtype)
                m.dense = True
                m.mask = masks[name] = s
        return masks

    def clear_training_masks(self) -> None:
        self.adapter.set_dense(False)

    def _xor(self, idx: _StateIndex, name: str, m: DeltaLinear) -> torch.Tensor:
        """bits(W) ^ bits(W + dW) of module ``name`` at this state (once per state)."""
        x = idx.xor.get(name)
        if x is None:
            w = m.base.weight.detach()
            x = self._buffer(name, "xor", w, _int_view(w).dtype)
            d = idx.delta[name]
            if d.dtype == w.dtype:  # W + dW straight into the buffer (= effective_weight(d)), then XOR W in place
                torch.add(w, d, out=x.view(w.dtype))
                x.bitwise_xor_(_int_view(w))
            else:  # float32 factors on a bf16/fp16 backbone: W + dW in float32, rounded once (as in training)
                torch.bitwise_xor(_int_view(m.effective_weight(d).to(w.dtype)), _int_view(w), out=x)
            idx.xor[name] = x
        return x

    @contextlib.contextmanager
    def applied(self, ratio: float | Sequence[float] | np.ndarray) -> Iterator[Mapping[str, torch.Tensor | None]]:
        """Evaluate with the adapter masked at ``ratio``; everything is undone on exit.

        Sets a precomputed ``W + M * dW`` on every wrapper (for no-grad evaluation) and
        restores the wrappers' previous state in ``finally``. Parameters are never written.
        The yielded bool masks (computed on access) and the effective weights live in buffers
        that the next ``applied`` reuses: copy them to keep them beyond the ``with`` block.
        """
        saved = {n: (m.dense, m.mask, m.weight_override) for n, m in self.adapter.modules.items()}
        reuse = self._applied_depth == 0  # the reusable buffers belong to the outermost context
        self._applied_depth += 1
        try:
            with torch.no_grad():
                selects = self._selects(ratio, self._probe_selects if reuse else None)
                idx = self.index()
                for name, m in self.adapter.modules.items():
                    w = m.base.weight.detach()
                    w_bits = _int_view(w)
                    buf = self._weight_buffers.get(name) if reuse else None
                    if buf is None or buf.shape != w.shape or buf.dtype != w_bits.dtype or buf.device != w.device:
                        buf = torch.empty_like(w_bits)
                        if reuse:
                            self._weight_buffers[name] = buf
                    xor = self._xor(idx, name, m)
                    s = selects[name]
                    if s is None:
                        torch.bitwise_xor(w_bits, xor, out=buf)  # = W + dW
                    else:
                        if s.dtype != xor.dtype:
                            s = s.to(xor.dtype)  # -1/0 in the weights' integer width
                        torch.bitwise_and(s, xor, out=buf)
                        buf.bitwise_xor_(w_bits)  # = W + M * dW, bit for bit
                    m.weight_override = buf.view(w.dtype)
            yield _BoolMasks(selects)
        finally:
            self._applied_depth -= 1
            for name, (dense, mask, override) in saved.items():
                m = self.adapter.modules.get(name)
                if m is not None:
                    m.dense, m.mask, m.weight_override = dense, mask, override


# --------------------------------------------------------------------------- export
def export_peft(adapter: DeltaAdapter, path: str | Path, *, masks: Mapping[str, torch.Tensor | None] | None = None,
                rank: int | None = None, base_model_name_or_path: str | None = None,
                metadata: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Save ``M * dW`` of every module as a peft LoRA folder that ``PeftModel.from_pretrained`` loads.

    ``rank=None``: exact (rank ``min(out, in)`` with an identity factor); ``rank=k``: a
    truncated SVD of rank ``<= k`` per module. Returns ``{"rel_error": ||D - BA|| / ||D||,
    "params": ...}`` over all modules (0 for the exact form up to rounding).
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    dest = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    err2 = ref2 = 0.0
    n_params = 0
    with torch.no_grad():
        for name, m in adapter.modules.items():
            d = m.delta()
            mask = None if masks is None else masks.get(name)
            if mask is not None:
                d = d * mask
            d = d.cpu()  # built and saved from CPU tensors (and the float64 SVD runs on any device)
            out_f, in_f = d.shape
            if rank is None:
                r = min(out_f, in_f)
                eye = torch.eye(r, dtype=d.dtype)
                A, B = (d.clone(), eye) if out_f <= in_f else (eye, d.clone())
            else:
                r = max(1, min(int(rank), out_f, in_f))
                U, S, Vh = torch.linalg.svd(d.double(), full_matrices=False)
                root = S[:r].sqrt()
                B = (U[:, :r] * root).to(d.dtype)
                A = (root[:, None] * Vh[:r]).to(d.dtype)
                err2 += float(((B @ A) - d).double().pow(2).sum())
            ref2 += float(d.double().pow(2).sum())
            tensors[f"base_model.model.{name}.lora_A.weight"] = A.contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = B.contiguous()
            rank_pattern[re.escape(name)] = r
            n_params += A.numel() + B.numel()
    max_r = max(rank_pattern.values())
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in adapter.modules})
    config = LoraConfig(r=max_r, lora_alpha=max_r, target_modules=suffixes, lora_dropout=0.0, bias="none",
                        task_type="CAUSAL_LM", rank_pattern=dict(rank_pattern), alpha_pattern=dict(rank_pattern),
                        base_model_name_or_path=base_model_name_or_path)
    with replacing_folder(dest) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        info = {"rel_error": math.sqrt(err2 / ref2) if ref2 > 0 else 0.0, "params": float(n_params)}
        meta = {"export": "exact" if rank is None else f"svd-rank-{rank}", **info, **dict(metadata or {})}
        (tmp / "grasp_lora.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return info
