"""LoRA adapters in peft format: the source and target adapters, their exact merge, the final export.

Pipeline pieces, in the order GRASP LoRA uses them:

1. **Train** a *source* and a *target* adapter with peft (:func:`attach_lora`,
   :func:`.training.train_lora`): plain AdamW on the summed answer-token loss, same target
   modules for both (:class:`LoraSpec`; default the attention ``q/k/v/o`` projections, add
   ``gate/up/down`` for the per-group knob).
2. **Save/load** them in peft format (:func:`save_lora`, :func:`load_lora`):
   ``PeftModel.from_pretrained`` loads what is saved.
3. **Merge** (:func:`merge_adapters`) with peft's ``add_weighted_adapter(...,
   combination_type="cat")``: concatenating ``w_i * s_i * A_i`` and ``B_i`` gives an adapter
   whose delta is *exactly* ``sum_i w_i * s_i * B_i @ A_i`` (rank ``sum r_i``, scale 1).
   Rules (:data:`MERGE_WEIGHTS`): ``sum`` (w = 1, 1), ``mean`` (0.5 each), ``weighted``
   (given weights), ``target_only`` / ``source_only`` (one adapter, unchanged).
4. **Prune** the merged adapter by global magnitude: its factors (:func:`lora_factors`) are
   installed as dense-delta wrappers (:mod:`hpctl.integrations.delta`) and masked by
   :class:`hpctl.integrations.pruner.GlobalMagnitudePruner`.
5. **Export** the pruned adapter: exactly as ``final_delta.safetensors`` and as a compact
   peft LoRA of the rank its dev loss allows (:mod:`hpctl.integrations.peft_export`; see
   :meth:`.task.GraspTask._export_final`).

The pruned adapter is saved in peft format by :func:`hpctl.integrations.peft_export.export_peft`
(re-exported here), shared with the Trainer integration's ``LoraPruneKnob.export``; the
factors and the dense-delta wrappers live in :mod:`hpctl.integrations.delta`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from hpctl.errors import ConfigError, one_line
from hpctl.fsutil import replacing_folder
from hpctl.integrations.delta import LowRank
from hpctl.integrations.peft_export import METADATA_FILE, export_peft

__all__ = ["ATTN_TARGETS", "GROUPS", "MERGE_RULES", "MERGE_WEIGHTS", "METADATA_FILE", "MLP_TARGETS", "Factors",
           "LoraSpec", "LowRank", "attach_lora", "export_peft", "load_lora", "lora_deltas", "lora_factors",
           "merge_adapters", "merge_error", "merge_weights", "parse_merge_weights", "parse_targets", "save_lora",
           "unload_lora"]

ATTN_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS: tuple[str, ...] = ("gate_proj", "up_proj", "down_proj")
#: module groups of the per-group knob (one prune ratio each)
GROUPS: dict[str, tuple[str, ...]] = {"attn": ATTN_TARGETS, "mlp": MLP_TARGETS}
#: weights of the (source, target) adapters per merge rule; None leaves that adapter out of the
#: merge (so its rank is not part of the merged adapter either); ``weighted`` takes two given weights
MERGE_WEIGHTS: dict[str, tuple[float | None, float | None] | None] = {
    "sum": (1.0, 1.0),
    "mean": (0.5, 0.5),
    "weighted": None,
    "target_only": (None, 1.0),
    "source_only": (1.0, None),
}
MERGE_RULES: tuple[str, ...] = tuple(MERGE_WEIGHTS)


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


def save_lora(model: nn.Module, name: str, path: str | Path, *, base_model_name_or_path: str | None = None,
              metadata: Mapping[str, Any] | None = None) -> Path:
    """Save adapter ``name`` in peft format directly in ``path`` (replacing it).

    ``base_model_name_or_path`` goes into ``adapter_config.json`` (peft leaves it empty for a
    transformers 5 model), so ``AutoPeftModelForCausalLM`` finds the backbone; ``metadata`` is
    written to ``grasp_lora.json`` beside it (hpctl's own names, e.g. the ``--backbone`` spec).
    """
    dest = Path(path)
    config = model.peft_config[name]
    before = config.base_model_name_or_path
    if base_model_name_or_path is not None:
        config.base_model_name_or_path = base_model_name_or_path
    try:
        with replacing_folder(dest) as tmp:
            # hpctl never resizes the vocabulary; "auto" would look the backbone's config up on the
            # hub (a DNS failure and two warnings per adapter offline) to find out
            model.save_pretrained(str(tmp), selected_adapters=[name], save_embedding_layers=False)
            if (tmp / name / "adapter_config.json").is_file():  # peft nests non-default adapters in a subfolder
                for item in (tmp / name).iterdir():
                    shutil.move(str(item), str(tmp / item.name))
                (tmp / name).rmdir()
            if metadata is not None:
                (tmp / METADATA_FILE).write_text(json.dumps(dict(metadata), indent=2, default=str) + "\n")
    finally:
        config.base_model_name_or_path = before
    return dest


def unload_lora(model: nn.Module) -> nn.Module:
    """The plain backbone back from a PeftModel (LoRA layers removed, nothing merged)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.unload()
    return model


def parse_merge_weights(text: str | None) -> list[float] | None:
    """``"0.3,1.0"`` (or ``;``-separated) as a list of floats; None for no text; else ConfigError."""
    if not text:
        return None
    try:
        return [float(x) for x in str(text).replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"merge weights must be numbers like '0.5,0.5', got {text!r}") from None


def merge_weights(rule: str, weights: Sequence[float] | None = None) -> tuple[float | None, float | None]:
    """The (source, target) weights of ``rule`` (:data:`MERGE_WEIGHTS`; ``weights`` for ``weighted``).

    ConfigError for an unknown rule, or ``weighted`` without exactly two weights.
    """
    if rule not in MERGE_WEIGHTS:
        raise ConfigError(f"unknown merge rule {rule!r} (choose from {', '.join(MERGE_RULES)})")
    fixed = MERGE_WEIGHTS[rule]
    if fixed is not None:
        return fixed
    if weights is None or len(weights) != 2:
        raise ConfigError(f"merge rule 'weighted' needs 2 weights, got {weights!r}")
    return float(weights[0]), float(weights[1])


def merge_adapters(model: nn.Module, names: Sequence[str], rule: str = "sum", *,
                   weights: Sequence[float] | None = None, new_name: str = "merged") -> str:
    """Add adapter ``new_name`` = the merge of ``names`` (``[source, target]``) under ``rule``.

    Every rule uses peft's ``add_weighted_adapter(combination_type="cat")``, which is exact:
    the new delta per module is ``sum_i w_i * delta_i`` with the weights of :func:`merge_weights`.
    """
    names = list(names)
    if len(names) != 2:
        raise ConfigError(f"a merge takes a source and a target adapter, got {names}")
    use = [(n, w) for n, w in zip(names, merge_weights(rule, weights)) if w is not None]
    if new_name in model.peft_config:
        model.delete_adapter(new_name)
    model.add_weighted_adapter([n for n, _ in use], [w for _, w in use], new_name, combination_type="cat")
    return new_name


def merge_error(merged: Factors, source: Factors, target: Factors, rule: str,
                weights: Sequence[float] | None = None) -> float:
    """Max ``|merged delta - rule(source, target)|`` over all modules (a self-check of :func:`merge_adapters`)."""
    w = merge_weights(rule, weights)  # None: left out of the merge
    worst = 0.0
    with torch.no_grad():
        for name, f in merged.items():
            expect = 0.0
            if name in source and w[0]:
                expect = expect + w[0] * source[name].delta()
            if name in target and w[1]:
                expect = expect + w[1] * target[name].delta()
            worst = max(worst, float((f.delta() - expect).abs().max()))
    return worst
