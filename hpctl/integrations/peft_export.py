"""Saving a (pruned) LoRA delta: in peft format, and exactly in a compact file of its own.

Shared by grasp_lora's final adapter and the Trainer integration's
:meth:`~hpctl.integrations.lora_prune.LoraPruneKnob.export`.

* :func:`export_peft` saves ``M * dW`` as a peft LoRA: exactly (rank ``min(out, in)`` with an
  identity factor, ``B = I, A = M*dW`` or ``A = I, B = M*dW``; per-module ``rank_pattern``,
  ``alpha = r`` so the scale is 1; ``PeftModel.from_pretrained`` reproduces the in-memory model
  to float rounding, but the file is larger than the dense delta: about 186 MB for Gemma 3
  270M q/k/v/o), or as a truncated SVD of rank ``k`` per module.
* :class:`TruncatedDeltas` gives rank-``k`` factors of every module's pruned delta for any
  ``k`` (a seeded randomized truncated SVD); :func:`export_lowrank` writes factors as an ordinary-rank peft folder (what
  grasp_lora's ``final_adapter`` is: the rank its dev loss chooses).
* :func:`save_pruned_delta` / :func:`load_pruned_delta`: the exact pruned delta as one
  safetensors file (:data:`DELTA_FILE`): the adapter's factors and the keep-mask packed into
  bits, a few MB; ``(B @ A) * mask`` is the delta the run trained and tested with.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from hpctl.errors import ConfigError
from hpctl.fsutil import replacing_folder

if TYPE_CHECKING:
    from hpctl.integrations.delta import DeltaAdapter, LowRank

__all__ = ["DELTA_FILE", "DELTA_FORMAT", "METADATA_FILE", "TruncatedDeltas", "export_lowrank", "export_peft",
           "file_bytes", "load_pruned_delta", "save_pruned_delta"]

#: hpctl's own description of a saved adapter, beside ``adapter_config.json`` (the name
#: predates the move from grasp_lora; saved adapters keep it)
METADATA_FILE = "grasp_lora.json"
#: the exact pruned delta beside a run's compact final adapter (:func:`save_pruned_delta`)
DELTA_FILE = "final_delta.safetensors"
#: the ``format`` entry of its safetensors metadata
DELTA_FORMAT = "hpctl.pruned_lora_delta.v1"


def file_bytes(path: str | Path) -> int:
    """The bytes of a file, or of every file under a folder."""
    p = Path(path)
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def save_pruned_delta(adapter: DeltaAdapter, path: str | Path, masks: Mapping[str, torch.Tensor | None],
                      metadata: Mapping[str, Any] | None = None) -> int:
    """Save the exact pruned delta ``M * dW`` of every module as one safetensors file; returns its bytes.

    Per module ``name`` (the weight's layout is ``(out, in)`` as for ``nn.Linear``; a
    ``Conv1D`` stores the transpose): ``name.lora_A`` (``r x in``, float32),
    ``name.lora_B`` (``out x r``, float32, the scale already multiplied in) and ``name.mask``
    (uint8, the keep-mask's ``out * in`` bits packed row-major, numpy ``packbits`` order).
    The delta is ``(B @ A) * unpackbits(mask)``: the same products the run trained, probed and
    tested with (bit for bit on the machine that ran, to float rounding elsewhere), in a few
    MB where a dense copy of Gemma 3 270M's would be 118 MB. :func:`load_pruned_delta`
    reads it; the file's metadata says which modules are ``Conv1D`` (``transposed``).
    """
    import numpy as np
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list] = {}
    with torch.no_grad():
        for name, m in adapter.modules.items():
            A = m.lora_A.detach().float()
            B = m.lora_B.detach().float() * m.scale  # = what DeltaLinear.delta() and the pruner multiply
            mask = masks.get(name)
            keep = (np.ones(B.shape[0] * A.shape[1], dtype=bool) if mask is None
                    else mask.detach().bool().cpu().numpy().reshape(-1))
            tensors[f"{name}.lora_A"] = A.cpu().contiguous()
            tensors[f"{name}.lora_B"] = B.cpu().contiguous()
            tensors[f"{name}.mask"] = torch.from_numpy(np.packbits(keep))
            shapes[name] = [int(B.shape[0]), int(A.shape[1]), bool(getattr(m, "transposed", False))]
    meta = {"format": DELTA_FORMAT, "modules": json.dumps(shapes),
            **{k: json.dumps(v, default=str) for k, v in dict(metadata or {}).items()}}
    dest = Path(path)
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp.with_name(tmp.name + ".mode"), "w") as probe:  # the mode open() gives (0666 less the umask)
        mode = os.fstat(probe.fileno()).st_mode & 0o777
    os.unlink(probe.name)
    save_file(tensors, str(tmp), metadata=meta)  # safetensors writes 0600
    os.chmod(tmp, mode)
    tmp.replace(dest)
    return dest.stat().st_size


def load_pruned_delta(path: str | Path) -> dict[str, tuple[LowRank, torch.Tensor, bool]]:
    """What :func:`save_pruned_delta` saved: per module ``(factors, keep-mask, transposed)``,
    ``factors.delta() * mask`` being the pruned delta (``(out, in)``; transpose it for a
    ``Conv1D``). A file that is not one is a one-line ConfigError."""
    import numpy as np
    from safetensors import safe_open

    from hpctl.integrations.delta import LowRank

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != DELTA_FORMAT:
                raise ConfigError(f"{path} is not an hpctl pruned delta (format {meta.get('format')!r}, "
                                  f"expected {DELTA_FORMAT!r})")
            out = {}
            for name, (n_out, n_in, transposed) in json.loads(meta["modules"]).items():
                bits = fh.get_tensor(f"{name}.mask").numpy()
                keep = torch.from_numpy(np.unpackbits(bits, count=n_out * n_in).reshape(n_out, n_in).astype(bool))
                out[name] = (LowRank(fh.get_tensor(f"{name}.lora_A"), fh.get_tensor(f"{name}.lora_B"), 1.0),
                             keep, bool(transposed))
            return out
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing, truncated or foreign file
        raise ConfigError(f"cannot read the pruned delta {path}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


class TruncatedDeltas:
    """Rank-``k`` approximations of every module's pruned delta ``M * dW``, for any ``k`` on demand.

    ``factors(k)`` gives per module a rank-``min(k, out, in)`` approximation as LoRA factors
    ``B = U_k S_k^(1/2)``, ``A = S_k^(1/2) V_k^T`` (scale 1): a randomized truncated SVD
    (``torch.svd_lowrank``, ``k + 8`` columns, 4 power iterations, seeded; the process's random
    state is left as it was), or the exact SVD where ``k`` comes within 8 of the module's full
    rank. On Gemma 3 270M's 72 q/k/v/o deltas (two busy cores) a float64 full SVD of every one
    took 205 s; this way rank 16 takes 2.2 s, rank 32 5.9 s, rank 256 46 s. ``rel_error(k)`` is the relative Frobenius error of
    those factors over all modules. The masked deltas are kept (float32, on the CPU).
    """

    OVERSAMPLE = 8
    POWER_ITERATIONS = 4

    def __init__(self, adapter: DeltaAdapter, masks: Mapping[str, torch.Tensor | None], *, seed: int = 0) -> None:
        self.seed = int(seed)
        self.transposed = {name: bool(getattr(m, "transposed", False)) for name, m in adapter.modules.items()}
        self.deltas: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, m in adapter.modules.items():
                d = m.delta()
                mask = masks.get(name)
                if mask is not None:
                    d = d * mask
                self.deltas[name] = d.detach().float().cpu()
        self._ref2 = sum(float(d.double().pow(2).sum()) for d in self.deltas.values())
        self._last: tuple[int, dict[str, LowRank]] | None = None

    def factors(self, rank: int) -> dict[str, LowRank]:
        from hpctl.integrations.delta import LowRank

        rank = int(rank)
        if self._last is not None and self._last[0] == rank:
            return self._last[1]
        out = {}
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for name, d in self.deltas.items():
                full = min(d.shape)
                r = max(1, min(rank, full))
                if r + self.OVERSAMPLE >= full:
                    U, S, Vh = torch.linalg.svd(d, full_matrices=False)
                else:
                    U, S, V = torch.svd_lowrank(d, q=r + self.OVERSAMPLE, niter=self.POWER_ITERATIONS)
                    Vh = V.T
                root = S[:r].clamp_min(0).sqrt()
                out[name] = LowRank((root[:, None] * Vh[:r]).contiguous(), (U[:, :r] * root).contiguous(), 1.0)
        self._last = (rank, out)
        return out

    def rel_error(self, rank: int) -> float:
        """``||M*dW - B_k A_k|| / ||M*dW||`` over all modules (0 for an all-zero delta)."""
        if self._ref2 <= 0:
            return 0.0
        facs = self.factors(rank)
        err2 = sum(float((self.deltas[n] - f.delta()).double().pow(2).sum()) for n, f in facs.items())
        return math.sqrt(err2 / self._ref2)


def export_lowrank(factors: Mapping[str, LowRank], path: str | Path, *, transposed: Mapping[str, bool] | None = None,
                   base_model_name_or_path: str | None = None, metadata: Mapping[str, Any] | None = None) -> int:
    """Save LoRA ``factors`` (``delta = B @ A * scale`` per module) as a peft folder; returns its bytes.

    The config's ``r`` is the most common rank and ``lora_alpha`` equals it (with the scale
    multiplied into ``B``, peft's scaling is then 1); only modules of another rank get a
    ``rank_pattern``/``alpha_pattern`` entry.
    """
    from collections import Counter

    from peft import LoraConfig
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for name, fac in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = fac.A.detach().float().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = (fac.B.detach().float() * fac.scale).cpu().contiguous()
        ranks[name] = int(fac.A.shape[0])
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(n): k for n, k in ranks.items() if k != r}
    flags = transposed or {}
    config = LoraConfig(r=r, lora_alpha=r, target_modules=sorted({n.rsplit(".", 1)[-1] for n in factors}),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", rank_pattern=pattern,
                        alpha_pattern=dict(pattern), base_model_name_or_path=base_model_name_or_path,
                        fan_in_fan_out=bool(flags) and all(flags.get(n, False) for n in factors))
    dest = Path(path)
    with replacing_folder(dest) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / METADATA_FILE).write_text(json.dumps(dict(metadata or {}), indent=2, default=str) + "\n")
    return file_bytes(dest)


def export_peft(adapter: DeltaAdapter, path: str | Path, *, masks: Mapping[str, torch.Tensor | None] | None = None,
                rank: int | None = None, base_model_name_or_path: str | None = None,
                metadata: Mapping[str, Any] | None = None, factors: bool = False) -> dict[str, float]:
    """Save ``M * dW`` of every module as a peft LoRA folder that ``PeftModel.from_pretrained`` loads.

    ``rank=None``: exact (rank ``min(out, in)`` with an identity factor); ``rank=k``: a
    truncated SVD of rank ``<= k`` per module; ``factors=True`` (no masks): the adapter's own
    low-rank factors, ``A`` and ``B * scale`` (exact, and as small as the adapter; the
    target-only baseline's). Returns ``{"rel_error": ||D - BA|| / ||D||, "params": ...}`` over
    all modules (0 for the exact forms up to rounding).
    """
    if factors and (masks is not None or rank is not None):
        raise ConfigError("export_peft: factors=True saves an unpruned adapter's own factors (no masks, no rank)")
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
            if factors:  # (B * scale) @ A is the delta exactly as DeltaLinear.delta() computes it
                A = m.lora_A.detach().float().cpu().clone()
                B = (m.lora_B.detach().float() * m.scale).cpu()
                r = int(A.shape[0])
            elif rank is None:
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
    # GPT-2's Conv1D layers store their weight (in, out): peft's fan_in_fan_out (the factors are the same)
    fan_in_fan_out = all(getattr(m, "transposed", False) for m in adapter.modules.values())
    config = LoraConfig(r=max_r, lora_alpha=max_r, target_modules=suffixes, lora_dropout=0.0, bias="none",
                        fan_in_fan_out=fan_in_fan_out,
                        task_type="CAUSAL_LM", rank_pattern=dict(rank_pattern), alpha_pattern=dict(rank_pattern),
                        base_model_name_or_path=base_model_name_or_path)
    with replacing_folder(dest) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        info = {"rel_error": math.sqrt(err2 / ref2) if ref2 > 0 else 0.0, "params": float(n_params)}
        kind = "factors" if factors else ("exact" if rank is None else f"svd-rank-{rank}")
        meta = {"export": kind, **info, **dict(metadata or {})}
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return info

