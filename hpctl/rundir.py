"""The run directory: what a run writes to disk, and reads back to resume.

A run directory holds ``spec.json`` (what was asked), ``checkpoint.safetensors`` (after
every round, written atomically; see :mod:`hpctl.statefile`: reading it cannot run code),
``history.jsonl`` (every probe and commit, appended as the run goes, so a checkpoint's
cost does not grow with the run), ``result.json`` (written as soon as the result exists,
before plots and artifact uploads), ``history.json`` and ``run.png``. Everything here is
file I/O; :mod:`hpctl.runner` decides when to call it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpctl.config import RunOptions
from hpctl import statefile
from hpctl.errors import ConfigError, ResumeError

CHECKPOINT = "checkpoint.safetensors"
HISTORY_LOG = "history.jsonl"
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


def prepare_out_dir(out: str | None, plugin: str, controller: str, seed: int, *, overwrite: bool = False) -> Path:
    """The run folder, created and checked writable.

    A folder that already holds a run (its ``spec.json``) is refused: writing a second run
    over it would mix the two and make neither resumable. ``overwrite`` empties it first.
    """
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        out = os.path.join("runs", f"{plugin}-{controller}-s{seed}-{stamp}")
    path = Path(out)
    if (path / SPEC).is_file():
        if not overwrite:
            raise ConfigError(f"{str(path)!r} already holds a run; resume it with --resume, choose another "
                              f"--out, or pass --overwrite to replace it")
        shutil.rmtree(path)
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


def to_jsonable(obj: Any, *, nonfinite: Callable[[float], Any] = str) -> Any:
    """``obj`` with numpy scalars and arrays, tuples, paths and dict keys made plain JSON; a
    non-finite float becomes ``nonfinite(x)`` (``"inf"`` by default, so it survives a round
    trip as text; pass ``lambda x: None`` for a JSON null)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, nonfinite=nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, nonfinite=nonfinite) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), nonfinite=nonfinite)
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return nonfinite(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically (a :mod:`hpctl.statefile`, never a pickle)."""
    atomic_write_bytes(out_dir / CHECKPOINT, statefile.dumps(state))


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    if not (out_dir / SPEC).is_file():
        raise ResumeError(f"{str(out_dir)!r} is not an hpctl run directory (no {SPEC})")
    if not (out_dir / CHECKPOINT).is_file():
        raise ResumeError(f"{str(out_dir)!r} has no {CHECKPOINT} to resume from")
    try:
        return statefile.loads((out_dir / CHECKPOINT).read_bytes())
    except (statefile.StateFileError, OSError) as exc:
        raise ResumeError(f"checkpoint in {str(out_dir)!r} cannot be used: {exc}") from None


class HistoryLog:
    """``history.jsonl``: the run's events, appended at checkpoints, one JSON object a line.

    A checkpoint records how many events it covers; a resumed run keeps exactly those
    (events written after that checkpoint are redone, deterministically, so they are cut).
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / HISTORY_LOG
        self.written = 0

    def append(self, events: list[dict[str, Any]]) -> None:
        """Append ``events[self.written:]`` and make them durable."""
        new = events[self.written:]
        if not new:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(e, default=_json_default) + "\n" for e in new))
            fh.flush()
            os.fsync(fh.fileno())
        self.written = len(events)

    def restore(self, count: int | None) -> list[dict[str, Any]]:
        """The first ``count`` events (all complete lines for None), and the file cut back to them."""
        events: list[dict[str, Any]] = []
        offset = 0
        try:
            with open(self.path, "rb") as fh:
                for line in fh:
                    if len(events) == count:
                        break
                    if not line.endswith(b"\n"):
                        break  # a torn last line: the checkpoint never counted it
                    events.append(json.loads(line))
                    offset += len(line)
        except FileNotFoundError:
            pass
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResumeError(f"{str(self.path)!r} is corrupt: {exc}") from None
        if count is None:
            count = len(events)
        if len(events) < count:
            raise ResumeError(f"{str(self.path)!r} holds {len(events)} events, the checkpoint needs {count}")
        if self.path.exists():
            with open(self.path, "r+b") as fh:
                fh.truncate(offset)
        self.written = count
        return events


def read_spec(out_dir: str | Path) -> RunSpec:
    p = Path(out_dir) / SPEC
    if not p.is_file():
        raise ResumeError(f"{str(out_dir)!r} is not an hpctl run directory (no {SPEC})")
    try:
        return RunSpec.from_json(json.loads(p.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ResumeError(f"{str(p)!r} is not a valid run spec: {exc}") from None
