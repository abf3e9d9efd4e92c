"""Unstructured pruning of a frozen backbone's block linears: scores, ranks, cheap exact masks.

What is pruned
--------------
Every ``nn.Linear`` inside the backbone's transformer blocks (:func:`block_linears`: the
``nn.ModuleList`` of layers, e.g. ``model.model.layers`` of Gemma 3), never the embeddings or
the LM head. Each is replaced in place by a :class:`PrunedLinear` that *shares* its parameters
and can run with a masked copy of its weight (``weight_override``); the parameters themselves
are never written, so "apply a mask, evaluate, undo" restores the backbone bit for bit by
construction, also when the evaluation raises.

Scores (computed once, on the dense backbone)
---------------------------------------------
``magnitude``: ``|W_ij|``. ``wanda`` (Sun et al., 2023): ``|W_ij| * ||X_j||_2``, the weight's
magnitude times the L2 norm of its input channel ``j`` over every (non-padding) token of a
calibration batch (:class:`InputNorms`; one forward pass of the dense backbone, not the
paper's layer-by-layer sequential pass).

Ranking (``ranking``)
---------------------
``row`` (default): the weights of each output row are ranked among themselves, and a sparsity
``s`` prunes the ``round(s * in_features)`` lowest-scoring weights of *every* row: Wanda's
per-output comparison group, which the paper found essential for Wanda, and for magnitude it is
the usual layer-uniform baseline. Every layer of a group then has the same sparsity (up to
rounding: ``|achieved - s| <= 0.5 / in_features``). ``global``: one ranking over all weights of
a group (every block linear for the global knob; attention or MLP projections for the
per-group knob), ``round(s * N_group)`` pruned exactly, so layers end up with different
sparsities. Ties are broken by position (a stable sort), so the pruned count is exact.

Cheap masks at any sparsity
---------------------------
The scores are turned into integer ranks once (:func:`row_ranks`, :func:`global_ranks`: int16
where the rank fits, else int32); the scores are then dropped. A sparsity becomes a count ``k``
per layer, and the layer's masked weight is formed without a branch per entry (``torch.where``
with a random mask runs at a fraction of memory speed on CPUs): a select word
``sel = (k - 1 - rank) >> (bits - 1)`` (arithmetic shift: ``-1`` where ``rank >= k``, kept;
``0`` where pruned) ANDed into the weight's bit pattern, so pruned entries are ``+0.0`` and
kept ones are bit-identical to ``W``. :class:`BackbonePruner` keeps two sets of buffers: the
*training* weights (the committed sparsity, rebuilt only when it changes) and the *probe*
weights (overwritten by each probe; undoing a probe is putting the training buffers back).

Masks on disk (:func:`save_masks` / :func:`load_masks`): one safetensors file, per layer the keep
mask bit-packed (``numpy.packbits``, 1 = kept, row-major; 1/32 of the float32 weights), with
the shapes, sparsities and score recipe in its metadata.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hpctl.errors import ConfigError, DataError
from hpctl.plugins.grasp_lora.lora import ATTN_TARGETS, MLP_TARGETS

SCORES = ("magnitude", "wanda")
RANKINGS = ("row", "global")
#: module groups of the per-group knob, in knob order
GROUP_NAMES = ("attn", "mlp")
#: path components that put a linear into a group (besides the Gemma/Llama suffixes)
_GROUP_WORDS = {"attn": ("self_attn", "attn", "attention", "self_attention", "cross_attn"),
                "mlp": ("mlp", "feed_forward", "ffn", "ff")}
MASKS_FORMAT = "hpctl-backbone-masks-1"

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# ----------------------------------------------------------------------------- finding the linears
def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The backbone's transformer blocks: ``(name, ModuleList)``, or None.

    The decoder's ``layers`` when the model has ``get_decoder()`` (Hugging Face causal LMs),
    else the ``nn.ModuleList`` of same-typed modules holding the most parameters.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None) if isinstance(decoder, nn.Module) else None
    if isinstance(layers, nn.ModuleList) and len(layers):
        for name, mod in model.named_modules():
            if mod is layers:
                return name, layers
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and len({type(m) for m in mod}) == 1:
            size = sum(p.numel() for p in mod.parameters())
            if best is None or size > best[0]:
                best = (size, name, mod)
    return None if best is None else (best[1], best[2])


def block_linears(model: nn.Module, what: str = "the backbone") -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the transformer blocks, by its name in ``model`` (in module order).

    Raises a one-line ConfigError when the model has no blocks or no linear layer in them
    (e.g. GPT-2's ``Conv1D`` projections).
    """
    found = find_blocks(model)
    if found is None:
        raise ConfigError(f"{what} has no transformer blocks (an nn.ModuleList of layers); nothing to prune")
    prefix, blocks = found
    out = {f"{prefix}.{n}" if prefix else n: m for n, m in blocks.named_modules() if isinstance(m, nn.Linear)}
    if not out:
        raise ConfigError(f"{what} has no linear layers in its transformer blocks ({prefix or 'the model'}: "
                          f"{type(blocks[0]).__name__}); nothing to prune")
    return out


def module_group(name: str) -> str | None:
    """``"attn"``, ``"mlp"`` or None for a block linear's name (by suffix, then by path component)."""
    parts = name.split(".")
    if parts[-1] in ATTN_TARGETS:
        return "attn"
    if parts[-1] in MLP_TARGETS:
        return "mlp"
    for group, words in _GROUP_WORDS.items():
        if any(p in words for p in parts[:-1]):
            return group
    return None


def group_layers(names: Sequence[str], per_group: bool) -> dict[str, list[str]]:
    """The knob's groups: ``{"all": names}``, or ``{"attn": [...], "mlp": [...]}`` (ConfigError if one is
    empty or a linear is in neither)."""
    if not per_group:
        return {"all": list(names)}
    out: dict[str, list[str]] = {g: [] for g in GROUP_NAMES}
    for n in names:
        g = module_group(n)
        if g is None:
            raise ConfigError(f"knob 'per_group': block linear {n!r} is neither an attention nor an MLP "
                              "projection; use --knob global")
        out[g].append(n)
    for g, members in out.items():
        if not members:
            raise ConfigError(f"knob 'per_group': the backbone has no {g} projections in its blocks; use --knob global")
    return out


class PrunedLinear(nn.Linear):
    """An ``nn.Linear`` that shares another's parameters and can run with a masked copy of its weight.

    ``weight_override`` (a tensor of the weight's shape and dtype, or None) is used in the
    forward instead of ``weight``; the parameters are never written. A subclass of
    ``nn.Linear``, so LoRA wrappers (peft, :class:`hpctl.integrations.delta.DeltaLinear`) accept it.
    """

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        if base.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = base.bias
        self.train(base.training)
        self.weight_override: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight_override is None else self.weight_override
        return F.linear(x, w, self.bias)


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, child = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


@contextlib.contextmanager
def installed(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, PrunedLinear]]:
    """:class:`PrunedLinear` wrappers at ``names`` for the block (the originals back after it, also on error)."""
    wrappers = install(model, names)
    try:
        yield wrappers
    finally:
        uninstall(model, wrappers)


def install(model: nn.Module, names: Sequence[str]) -> dict[str, PrunedLinear]:
    """Replace the linears at ``names`` by :class:`PrunedLinear` wrappers sharing their parameters."""
    out: dict[str, PrunedLinear] = {}
    for name in names:
        parent, child = _parent(model, name)
        orig = getattr(parent, child)
        if not isinstance(orig, nn.Linear):
            raise ConfigError(f"module {name!r} is {type(orig).__name__}, not a linear layer")
        wrapped = orig if isinstance(orig, PrunedLinear) else PrunedLinear(orig)
        object.__setattr__(wrapped, "_original", orig)  # a plain attribute, not a registered submodule
        setattr(parent, child, wrapped)
        out[name] = wrapped
    return out


def uninstall(model: nn.Module, wrappers: Mapping[str, PrunedLinear]) -> None:
    """Put the original linears back (wherever a wrapper sits now, e.g. inside a LoRA wrapper)."""
    for name, w in wrappers.items():
        w.weight_override = None
        for mod_name, mod in model.named_modules():
            for child_name, child in mod.named_children():
                if child is w:
                    setattr(mod, child_name, getattr(w, "_original", w))


# ----------------------------------------------------------------------------- scores and ranks
class InputNorms:
    """Forward hooks summing the squares of each module's input per input channel (Wanda's ``||X_j||``).

    Set ``token_mask`` (``(batch, seq)`` bool: real tokens) before each forward so padding is not
    counted; :meth:`norms` gives ``sqrt(sum of squares)`` per module (float32, on the CPU).
    """

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.sumsq: dict[str, torch.Tensor] = {}
        self.tokens = 0
        self.token_mask: torch.Tensor | None = None
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in modules.items()]

    def _hook(self, name: str):
        def hook(_mod: nn.Module, args: tuple, _out: Any) -> None:
            x = args[0].detach()
            if self.token_mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(self.token_mask.shape):
                x = x[self.token_mask.to(x.device)]
            x = x.reshape(-1, x.shape[-1]).float()
            s = x.pow(2).sum(0).cpu()
            self.sumsq[name] = s if name not in self.sumsq else self.sumsq[name].add_(s)

        return hook

    def norms(self) -> dict[str, torch.Tensor]:
        return {n: s.sqrt() for n, s in self.sumsq.items()}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "InputNorms":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def layer_scores(weight: torch.Tensor, score: str, input_norm: torch.Tensor | None = None) -> torch.Tensor:
    """The pruning score of every weight (float32, CPU; lower is pruned first)."""
    if score not in SCORES:
        raise ConfigError(f"unknown score {score!r} (choose from {', '.join(SCORES)})")
    s = weight.detach().float().abs().cpu()
    if score == "wanda":
        if input_norm is None or input_norm.shape != (s.shape[1],):
            raise ConfigError(f"wanda needs one input norm per input channel ({s.shape[1]})")
        s = s * input_norm.float().cpu()[None, :]
    return s


def _rank_dtype(n: int) -> torch.dtype:
    return torch.int16 if n <= 32767 else (torch.int32 if n <= 2**31 - 1 else torch.int64)


def row_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Each weight's rank within its output row (0 = lowest score; ties by column), int16 where it fits."""
    out_f, in_f = scores.shape
    order = torch.argsort(scores, dim=1, stable=True)
    ranks = torch.empty((out_f, in_f), dtype=torch.int64)
    ranks.scatter_(1, order, torch.arange(in_f, dtype=torch.int64).expand(out_f, in_f))
    return ranks.to(_rank_dtype(in_f))


def global_ranks(scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each weight's rank over all ``scores`` together (module order, row-major for ties)."""
    sizes = [s.numel() for s in scores]
    flat = torch.cat([s.reshape(-1) for s in scores])
    order = torch.argsort(flat, stable=True)
    del flat
    ranks = torch.empty(order.numel(), dtype=_rank_dtype(order.numel()))
    ranks[order] = torch.arange(order.numel(), dtype=torch.int64).to(ranks.dtype)
    return [r.view(s.shape).clone() for r, s in zip(torch.split(ranks, sizes), scores)]


# ----------------------------------------------------------------------------- the pruner
@dataclass
class _Layer:
    name: str
    group: str
    module: PrunedLinear
    rank: torch.Tensor  # on the weight's device
    #: the rank's comparison group size: in_features (row ranking) or the group's total (global)
    span: int


class BackbonePruner:
    """Exact unstructured masks of a backbone's block linears at any sparsity, from ranks computed once.

    ``wrappers``: the installed :class:`PrunedLinear` modules by name; ``groups``: the knob's
    groups (``{"all": [...]}`` or ``{"attn": [...], "mlp": [...]}``); ``ranks``: per layer the
    rank of each weight (:func:`row_ranks` / :func:`global_ranks`); ``ranking``: ``"row"`` or
    ``"global"``. A sparsity is a scalar (every group) or one value per group, each in [0, 1].
    """

    def __init__(self, wrappers: Mapping[str, PrunedLinear], groups: Mapping[str, Sequence[str]],
                 ranks: Mapping[str, torch.Tensor], ranking: str) -> None:
        if ranking not in RANKINGS:
            raise ConfigError(f"unknown ranking {ranking!r} (choose from {', '.join(RANKINGS)})")
        self.ranking = ranking
        self.group_names = tuple(groups)
        self.layers: dict[str, _Layer] = {}
        for g, names in groups.items():
            total = sum(wrappers[n].weight.numel() for n in names)
            for n in names:
                w = wrappers[n].weight
                r = ranks[n]
                if tuple(r.shape) != tuple(w.shape):
                    raise ConfigError(f"ranks of {n!r} have shape {tuple(r.shape)}, the weight {tuple(w.shape)}")
                span = w.shape[1] if ranking == "row" else total
                self.layers[n] = _Layer(n, g, wrappers[n], r.to(w.device), span)
        self._train_bufs: dict[str, torch.Tensor] = {}
        self._probe_bufs: dict[str, torch.Tensor] = {}
        self._sel_bufs: dict[str, torch.Tensor] = {}
        self._train_value: tuple[float, ...] | None = None
        self._depth = 0
        #: wall seconds :meth:`applied` spent forming masked weights and putting the previous ones back
        self.apply_seconds = 0.0
        self.applies = 0

    # -- counts ------------------------------------------------------------------
    def sparsities(self, value: float | Sequence[float] | np.ndarray) -> dict[str, float]:
        """``value`` as one sparsity per group (ConfigError unless each is in [0, 1])."""
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
        if arr.size == 1:
            arr = np.full(len(self.group_names), float(arr[0]))
        if arr.size != len(self.group_names):
            raise ConfigError(f"{arr.size} sparsities for {len(self.group_names)} groups {self.group_names}")
        if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
            raise ConfigError(f"sparsities must be in [0, 1], got {arr.tolist()}")
        return dict(zip(self.group_names, arr.tolist()))

    def counts(self, value: float | Sequence[float] | np.ndarray) -> dict[str, int]:
        """Per layer the rank below which weights are pruned: ``round(s * span)``."""
        s = self.sparsities(value)
        return {n: int(round(s[l.group] * l.span)) for n, l in self.layers.items()}

    def pruned_counts(self, value: float | Sequence[float] | np.ndarray) -> dict[str, int]:
        """Weights pruned per layer at ``value`` (row ranking: counted without a pass over the ranks)."""
        out = {}
        for n, k in self.counts(value).items():
            l = self.layers[n]
            if self.ranking == "row":
                out[n] = min(k, l.span) * l.module.out_features
            else:  # the group's k lowest ranks, wherever they fall
                out[n] = int((l.rank < k).sum())
        return out

    def achieved(self, value: float | Sequence[float] | np.ndarray) -> dict[str, float]:
        """Fraction pruned per group and ``"all"`` (over every block linear) at ``value``; exact and cheap."""
        counts = self.counts(value)
        res: dict[str, float] = {}
        tot_p = tot_n = 0
        for g in self.group_names:
            members = [l for l in self.layers.values() if l.group == g]
            n_ = sum(l.module.weight.numel() for l in members)
            if self.ranking == "row":
                p = sum(min(counts[l.name], l.span) * l.module.out_features for l in members)
            else:  # exactly k of the group's ranks are below k
                p = min(counts[members[0].name], n_)
            res[g] = p / max(1, n_)
            tot_p, tot_n = tot_p + p, tot_n + n_
        res["all"] = tot_p / max(1, tot_n)
        return res

    @property
    def n_weights(self) -> int:
        return sum(l.module.weight.numel() for l in self.layers.values())

    # -- masks ---------------------------------------------------------------------
    def keep_masks(self, value: float | Sequence[float] | np.ndarray) -> dict[str, torch.Tensor]:
        """Bool keep-masks per layer (True = kept) at ``value``."""
        return {n: self.layers[n].rank >= k for n, k in self.counts(value).items()}

    def _fill(self, bufs: dict[str, torch.Tensor], value: float | Sequence[float] | np.ndarray,
              fresh: bool = False) -> dict[str, torch.Tensor | None]:
        """Masked weights at ``value`` written into ``bufs`` (None where nothing is pruned)."""
        out: dict[str, torch.Tensor | None] = {}
        with torch.no_grad():
            for n, k in self.counts(value).items():
                l = self.layers[n]
                w = l.module.weight.detach()
                if k <= 0:
                    out[n] = None
                    continue
                wbits_dtype = _INT_VIEW[w.element_size()]
                buf = None if fresh else bufs.get(n)
                if buf is None or buf.shape != w.shape or buf.dtype != w.dtype or buf.device != w.device:
                    buf = torch.empty_like(w)
                    if not fresh:
                        bufs[n] = buf
                bits = buf.view(wbits_dtype)
                rank = l.rank
                if rank.dtype == wbits_dtype:
                    sel = bits  # the select word is built in the output buffer itself
                else:
                    sel = None if fresh else self._sel_bufs.get(n)
                    if sel is None or sel.shape != rank.shape or sel.dtype != rank.dtype or sel.device != rank.device:
                        sel = torch.empty_like(rank)
                        if not fresh:
                            self._sel_bufs[n] = sel
                shift = torch.iinfo(rank.dtype).bits - 1
                kk = min(int(k), l.span)  # k - 1 - rank >= -span: no overflow in the rank's own width
                torch.sub(torch.tensor(kk - 1, dtype=rank.dtype, device=rank.device), rank, out=sel)
                sel.bitwise_right_shift_(shift)  # arithmetic: -1 kept (rank >= k), 0 pruned
                if sel is not bits:
                    bits.copy_(sel)  # -1 / 0 in the weight's integer width
                bits.bitwise_and_(w.view(wbits_dtype))  # kept: W's bits; pruned: +0.0
                out[n] = buf
        return out

    def _set(self, weights: Mapping[str, torch.Tensor | None]) -> None:
        for n, w in weights.items():
            self.layers[n].module.weight_override = w

    def set_training(self, value: float | Sequence[float] | np.ndarray) -> None:
        """Run the backbone pruned at ``value`` from now on (the buffers are rebuilt only when it changes)."""
        key = tuple(self.sparsities(value).values())
        if key != self._train_value or not self._train_bufs:
            self._train_value = None
            weights = self._fill(self._train_bufs, value)
            self._train_weights = weights
            self._train_value = key
        self._set(self._train_weights)

    def clear(self) -> None:
        """The dense backbone again (training buffers kept for the next :meth:`set_training`)."""
        for l in self.layers.values():
            l.module.weight_override = None

    def current(self) -> dict[str, torch.Tensor | None]:
        """What every layer runs with now (its override, or None for the dense weight)."""
        return {n: l.module.weight_override for n, l in self.layers.items()}

    @contextlib.contextmanager
    def applied(self, value: float | Sequence[float] | np.ndarray) -> Iterator[None]:
        """Evaluate with the backbone pruned at ``value``; the previous overrides are back on exit (also on error)."""
        t0 = time.perf_counter()
        saved = self.current()
        reuse = self._depth == 0
        self._depth += 1
        try:
            self._set(self._fill(self._probe_bufs, value, fresh=not reuse))
            self.apply_seconds += time.perf_counter() - t0
            yield
        finally:
            t1 = time.perf_counter()
            self._depth -= 1
            self._set(saved)
            self.apply_seconds += time.perf_counter() - t1
            self.applies += 1

    @contextlib.contextmanager
    def dense(self) -> Iterator[None]:
        """The dense backbone for the block; the previous overrides are back on exit."""
        saved = self.current()
        try:
            self.clear()
            yield
        finally:
            self._set(saved)

    def export(self, path: str | Path, value: float | Sequence[float] | np.ndarray,
               metadata: Mapping[str, Any] | None = None) -> int:
        """Save the keep masks at ``value`` (:func:`save_masks`); returns the file's size in bytes."""
        masks = self.keep_masks(value)
        meta = {"achieved": self.achieved(value), "groups": {n: l.group for n, l in self.layers.items()},
                "ranking": self.ranking, **dict(metadata or {})}
        return save_masks(path, masks, meta)


# ----------------------------------------------------------------------------- masks on disk
def save_masks(path: str | Path, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> int:
    """Bit-packed keep masks (1 = kept) per layer in one safetensors file; returns its size in bytes."""
    from safetensors.numpy import save

    tensors = {}
    shapes = {}
    for name, m in masks.items():
        arr = m.detach().to("cpu").numpy().astype(bool, copy=False).reshape(-1)
        tensors[name] = np.packbits(arr)
        shapes[name] = list(m.shape)
    meta = {"format": MASKS_FORMAT, "shapes": json.dumps(shapes),
            "metadata": json.dumps(dict(metadata or {}), default=str)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:  # open(): the usual file mode (safetensors' save_file writes 0600)
        fh.write(save(tensors, metadata=meta))
    tmp.replace(path)
    return path.stat().st_size


def load_masks(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The keep masks (bool tensors) and the metadata saved by :func:`save_masks`; DataError if unreadable."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            header = fh.metadata() or {}
            if header.get("format") != MASKS_FORMAT:
                raise DataError(f"{path}: not an hpctl backbone mask file (format {header.get('format')!r})")
            shapes = json.loads(header["shapes"])
            masks = {}
            for name in fh.keys():
                shape = shapes[name]
                n = int(np.prod(shape))
                bits = np.unpackbits(fh.get_tensor(name), count=n).astype(bool)
                masks[name] = torch.from_numpy(bits.reshape(shape))
            return masks, json.loads(header.get("metadata", "{}"))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing, truncated or foreign file
        raise DataError(f"{path}: cannot read the backbone masks ({type(exc).__name__}: {exc})".splitlines()[0]) from None
