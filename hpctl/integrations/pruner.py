"""Global magnitude pruning of an adapter's effective deltas, exact and cheap per probe.

Shared by grasp_lora (its merged adapter) and the Trainer integration's
:class:`~hpctl.integrations.lora_prune.LoraPruneKnob`.

The threshold is global: one ranking of ``|dW|`` over all modules of a group
(``groups={"attn": [...], "mlp": [...]}`` gives one ratio per group). Exactly
``round(rho * N)`` entries are pruned; ties at the threshold (common: float32 magnitudes
repeat) are broken in module order, row-major.

Per training state one pass builds a radix histogram of the float32 bit patterns of ``|dW|``
(:class:`_StateIndex`); each ratio then needs ``kthvalue`` only over the entries of one
histogram bucket (instead of a ``kthvalue`` over everything, 0.35-0.47 s for Gemma 3 270M's
29.5M entries, or a 2.7 s sort) and four branch-free integer passes that turn the threshold
into the probe's weights (see :class:`GlobalMagnitudePruner`). A probe's prune+restore is
therefore a fixed ~74 ms on that adapter whatever the micro-dev size (~155 ms for the first
probe at a training state, which builds the histogram; measured in
``benchmarks/results/grasp_vs_grid_cpu.md``), while its forward grows with the micro-dev
(about 0.2 s per example there).

Masks never touch a parameter: they are separate tensors set on the
:class:`hpctl.integrations.delta.DeltaLinear` wrappers and cleared in a ``finally`` (:meth:`GlobalMagnitudePruner.applied`), so "apply,
evaluate, undo" is bit-exact by construction, also when the evaluation raises.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from hpctl.errors import ConfigError
from hpctl.integrations.delta import DeltaAdapter, DeltaLinear

_HIST_BITS = 16  # the histogram keys on the top 16 bits of the float32 pattern of |dW|
_ONE_F32_BITS = 0x3F800000  # the bit pattern of 1.0f
_LITTLE_ENDIAN = sys.byteorder == "little"


def _int_view(t: torch.Tensor) -> torch.Tensor:
    """``t``'s bits as a signed integer tensor of the same element size (float32 -> int32, bf16 -> int16)."""
    return t.view({4: torch.int32, 2: torch.int16, 8: torch.int64}[t.element_size()])


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
                    d = self._buffer(name, "delta", m.base_weight, m.lora_A.dtype)
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
            w = m.base_weight.detach()
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
                    w = m.base_weight.detach()
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


