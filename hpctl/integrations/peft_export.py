"""Saving a (pruned) LoRA delta in peft format: :func:`export_peft`.

Shared by grasp_lora's final adapter and the Trainer integration's
:meth:`~hpctl.integrations.lora_prune.LoraPruneKnob.export`.

The final adapter is saved in peft LoRA format, exactly by default: each module's
``M * dW`` (out x in) becomes a LoRA of rank ``min(out, in)`` with an identity factor
(``B = I, A = M*dW`` or ``A = I, B = M*dW``; per-module ``rank_pattern``, ``alpha = r``
so the scale is 1). ``PeftModel.from_pretrained`` then reproduces the in-memory model up
to float rounding (tested to 1e-4 relative on logits). The file is larger than the dense
delta (about 180 MB for Gemma 3 270M q/k/v/o); ``rank=k`` instead stores a truncated SVD of
rank k per module and reports its relative Frobenius error.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from hpctl.errors import ConfigError
from hpctl.fsutil import replacing_folder

if TYPE_CHECKING:
    from hpctl.integrations.delta import DeltaAdapter

__all__ = ["METADATA_FILE", "export_peft"]

#: hpctl's own description of a saved adapter, beside ``adapter_config.json`` (the name
#: predates the move from grasp_lora; saved adapters keep it)
METADATA_FILE = "grasp_lora.json"


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

