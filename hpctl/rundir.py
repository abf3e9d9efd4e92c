"""The run directory: what a run writes to disk, and reads back to resume.

A run directory holds ``spec.json`` (what was asked), ``checkpoint.pt`` (after every round,
written atomically), ``result.json`` (written as soon as the result exists, before plots
and artifact uploads), ``history.json`` and ``run.png``. Everything here is file I/O;
:mod:`hpctl.runner` decides when to call it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from hpctl.config import RunOptions
from hpctl.errors import ConfigError, ResumeError

CHECKPOINT = "checkpoint.pt"
SPEC = "spec.json"
RESULT = "result.json"
#: minimum seconds between two checkpoints (every round of a real training run is longer)
CHECKPOINT_EVERY_S = 0.25


@dataclass
class RunSpec:
    """Everything that defines a run (saved as ``spec.json`` for ``--resume``)."""

    plugin: str
    options: RunOptions = field(default_factory=RunOptions)
    plugin_config: dict[str, Any] = field(default_factory=dict)
    command: str = "run"

    def to_json(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "options": dataclasses.asdict(self.options),
                "plugin_config": self.plugin_config, "command": self.command}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunSpec":
        return cls(plugin=data["plugin"], options=RunOptions(**data["options"]),
                   plugin_config=dict(data["plugin_config"]), command=data.get("command", "run"))


def prepare_out_dir(out: str | None, plugin: str, controller: str, seed: int) -> Path:
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        out = os.path.join("runs", f"{plugin}-{controller}-s{seed}-{stamp}")
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output directory {str(path)!r} is not writable: {exc.strerror or exc}") from None
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> None:
    """Write ``checkpoint.pt`` atomically (pickle; tensors in task snapshots pickle as well)."""
    atomic_write_bytes(out_dir / CHECKPOINT, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    if not (out_dir / SPEC).is_file():
        raise ResumeError(f"{str(out_dir)!r} is not an hpctl run directory (no {SPEC})")
    if not (out_dir / CHECKPOINT).is_file():
        raise ResumeError(f"{str(out_dir)!r} has no {CHECKPOINT} to resume from")
    if (out_dir / RESULT).is_file():
        raise ResumeError(f"the run in {str(out_dir)!r} has finished ({RESULT} exists); nothing to resume")
    try:
        with open(out_dir / CHECKPOINT, "rb") as fh:
            return pickle.load(fh)
    except Exception as exc:  # noqa: BLE001
        raise ResumeError(f"checkpoint in {str(out_dir)!r} cannot be read: {exc}") from None


def read_spec(out_dir: str | Path) -> RunSpec:
    p = Path(out_dir) / SPEC
    if not p.is_file():
        raise ResumeError(f"{str(out_dir)!r} is not an hpctl run directory (no {SPEC})")
    try:
        return RunSpec.from_json(json.loads(p.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ResumeError(f"{str(p)!r} is not a valid run spec: {exc}") from None
