"""The source and target adapters: trained once per ``out_dir`` and settings, reused, or loaded.

:func:`prepare_adapter` gives the task its peft adapter ``"source"`` (trained on English
``source_train``) or ``"target"`` (on ``target_train``): loaded from ``--source-adapter`` /
``--target-adapter`` when given, else reused from ``out_dir/{role}_adapter`` when that folder's
fingerprint (:func:`adapter_fingerprint`: every setting that shapes the adapter) matches, else
trained with :func:`.training.train_lora` and saved there in peft format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from hpctl.errors import ConfigError
from hpctl.plugins.grasp_lora.lm import Encoded, PassCounter
from hpctl.plugins.grasp_lora.lora import LoraSpec, attach_lora, load_lora, save_lora
from hpctl.plugins.grasp_lora.training import train_lora


def adapter_fingerprint(cfg: Any, role: str, *, seed: int, spec: LoraSpec, dtype: torch.dtype) -> str:
    """A short hash of every setting that shapes the ``role`` adapter (a reused one must match it)."""
    keys = {"role": role, "backbone": cfg.backbone, "task": cfg.task, "lang": cfg.lang, "data_dir": cfg.data_dir,
            "data_seed": cfg.data_seed, "seed": seed, "spec": asdict(spec),
            "steps": cfg.source_steps if role == "source" else cfg.target_steps, "lr": cfg.adapter_lr,
            "batch_size": cfg.batch_size, "max_len": cfg.max_len, "max_target_len": cfg.max_target_len,
            "max_context_chars": cfg.max_context_chars,
            "n": cfg.source_train if role == "source" else cfg.target_train, "weight_decay": cfg.weight_decay,
            "grad_clip": cfg.grad_clip}
    if dtype != torch.float32:  # float32 keeps the fingerprints (and reused adapters) of older runs
        keys["dtype"] = str(dtype)
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_adapter(base: Any, role: str, cfg: Any, *, seed: int, spec: LoraSpec, dtype: torch.dtype,
                    out_dir: Path, data: Sequence[Encoded], pad_id: int, counter: PassCounter | None = None,
                    progress: Callable[[str, int], Callable[[int, float], None]] | None = None,
                    base_model_name_or_path: str | None = None, metadata: dict[str, Any] | None = None,
                    ) -> tuple[Any, str, list[float]]:
    """Load, reuse or train the ``role`` adapter (``"source"``/``"target"``) as peft adapter ``role`` on ``base``.

    ``cfg`` is a resolved config, ``data`` the role's training examples. ``progress(label,
    steps)`` gives the per-step callback of a training run. Returns the peft model, a note on
    where the adapter came from, and the training losses (empty unless it was trained now).
    A trained adapter is saved with ``base_model_name_or_path`` in its ``adapter_config.json``
    and ``metadata`` in its ``grasp_lora.json`` (:func:`.lora.save_lora`).
    """
    given = cfg.source_adapter if role == "source" else cfg.target_adapter
    if given:
        return load_lora(base, given, role), f"loaded from {given}", []
    folder = out_dir / f"{role}_adapter"
    stamp = folder / "hpctl_fingerprint.txt"
    fp = adapter_fingerprint(cfg, role, seed=seed, spec=spec, dtype=dtype)
    if stamp.is_file() and stamp.read_text().strip() == fp:
        return load_lora(base, folder, role), f"reused {folder}", []
    steps = int(cfg.source_steps if role == "source" else cfg.target_steps)
    if not data and steps > 0:
        raise ConfigError(f"no {role} training examples (raise --{role}-train or pass --{role}-adapter)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + (1 if role == "source" else 2))
        model = attach_lora(base, role, spec)
    losses: list[float] = []
    if steps > 0:
        losses = train_lora(model, role, data, steps=steps, lr=float(cfg.adapter_lr),
                            batch_size=int(cfg.batch_size), pad_id=pad_id,
                            seed=seed * 1000 + (11 if role == "source" else 12),
                            weight_decay=float(cfg.weight_decay), grad_clip=float(cfg.grad_clip) or None,
                            counter=counter, on_step=progress(f"{role} adapter", steps) if progress else None)
    save_lora(model, role, folder, base_model_name_or_path=base_model_name_or_path, metadata=metadata)
    stamp.write_text(fp + "\n")
    return model, f"trained {steps} steps, saved to {folder}", losses
