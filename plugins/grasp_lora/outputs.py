"""What a GRASP LoRA run leaves in its folder, and where: the saved adapters (peft folders with
hpctl's own ``grasp_lora.json`` beside each), the test predictions (JSON lines) and the phase
record ``grasp_phases.json`` (seconds and backbone passes per phase, notes). :class:`.task.GraspTask`
writes them; ``hpctl eval`` and the tests find them here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

#: the adapters a run saves, by ``hpctl eval --adapter`` name, and their folders in the run folder
ADAPTER_FOLDERS = {"final": "final_adapter", "target_only": "target_only_adapter",
                   "source": "source_adapter", "target": "target_adapter"}
PREDICTION_FILES = ("test_predictions.jsonl", "target_only_test_predictions.jsonl")
PHASES_FILE = "grasp_phases.json"
#: the final adapter's exact pruned delta (:func:`hpctl.integrations.peft_export.save_pruned_delta`), beside
#: the compact ``final_adapter``; ``hpctl eval --adapter final`` scores it
DELTA_FILE = "final_delta.safetensors"


def encoder_name(backbone: str) -> str:
    """How the semantic F1's encoder is named in every output."""
    return f"{backbone}: last hidden layer of the frozen backbone, no adapter"


def saved_adapters(out_dir: Path) -> dict[str, Path]:
    """The adapters saved in a run folder (those with an ``adapter_config.json``), by name."""
    return {role: out_dir / folder for role, folder in ADAPTER_FOLDERS.items()
            if (out_dir / folder / "adapter_config.json").is_file()}


def adapter_metadata(role: str, cfg: Any, backbone: str, seed: int) -> dict[str, Any]:
    """hpctl's own names for a saved adapter (``grasp_lora.json``): its role, the ``--backbone``
    spec, the backbone's label, task and language (``adapter_config.json`` names a loadable path)."""
    return {"role": role, "backbone_spec": cfg.backbone, "backbone": backbone,
            "task": cfg.task, "lang": cfg.lang, "seed": seed}


def write_predictions(path: Path, ids: Sequence[str], predictions: Sequence[str],
                      references: Sequence[Sequence[str]]) -> None:
    """One JSON line per example: its id, the prediction and the references."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i, p, refs in zip(ids, predictions, references):
            fh.write(json.dumps({"id": i, "prediction": p, "references": refs}, ensure_ascii=False) + "\n")


def write_phases(out_dir: Path, seconds: Mapping[str, float], passes: Mapping[str, Any],
                 notes: Mapping[str, Any], backbone: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PHASES_FILE).write_text(json.dumps(
        {"seconds": seconds, "passes": passes, "notes": notes, "backbone": backbone}, indent=2, default=str) + "\n")


def artifact_paths(out_dir: Path) -> list[Path]:
    """What a run leaves worth keeping: every adapter folder (final, target-only, source,
    target), the final adapter's exact delta, the test predictions and the phase record (those that exist)."""
    names = [*ADAPTER_FOLDERS.values(), DELTA_FILE, *PREDICTION_FILES, PHASES_FILE]
    return [out_dir / n for n in names if (out_dir / n).exists()]
