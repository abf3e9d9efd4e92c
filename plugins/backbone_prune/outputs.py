"""What a backbone_prune run leaves in its folder (:class:`.task.BackbonePruneTask` writes it,
``hpctl eval`` and the tests read it):

``final_adapter/``
    the recovered LoRA adapter (peft format, its own low-rank factors, exact), trained on the
    backbone pruned at the learned sparsity; ``grasp_lora.json`` beside it names the backbone,
    sparsity and score recipe.
``dense_adapter/``
    the dense baseline's adapter (the same training on the unpruned backbone).
``masks.safetensors``
    the keep masks of every block linear at the learned sparsity, bit-packed
    (:func:`.masks.save_masks`; :func:`.masks.load_masks` reads them back).
``test_predictions.jsonl``, ``dense_test_predictions.jsonl``
    greedy answers on the test split (with ``generate``).
``backbone_prune.json``
    the metrics, seconds and backbone passes per phase, the dense reference's losses per step
    and every probe's record (step, value, sparsity, loss, reference, reward).
"""

from __future__ import annotations

import sys
from pathlib import Path

#: ``hpctl eval --adapter`` names and their folders
ADAPTER_FOLDERS = {"final": "final_adapter", "dense": "dense_adapter"}
MASKS_FILE = "masks.safetensors"
RECORD_FILE = "backbone_prune.json"
PREDICTION_FILES = ("test_predictions.jsonl", "dense_test_predictions.jsonl")


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[backbone_prune] {msg}", file=sys.stderr, flush=True)


def artifact_paths(out_dir: Path) -> list[Path]:
    """The outputs that exist in ``out_dir`` (adapters, masks, predictions, the record)."""
    names = [*ADAPTER_FOLDERS.values(), MASKS_FILE, *PREDICTION_FILES, RECORD_FILE]
    return [out_dir / n for n in names if (out_dir / n).exists()]
