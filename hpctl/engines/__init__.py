"""Engines: where a run's independent pieces execute (``--engine local|ray``).

``local`` (the default) runs everything in this process, in order, and imports no Ray.
``ray`` (:mod:`hpctl.engines.ray`, the only module that imports Ray) runs

* ``hpctl compare``'s trials, one Ray task per (controller, seed);
* a grid's full fine-tunes (``grid`` with ``full_runs``), one Ray task per point;
* GRPO's probe groups on ``--probe-workers`` Ray actors, each with a replica of the task,

each task or actor with ``--cpus-per-trial`` CPUs and ``--gpus-per-trial`` GPUs, on a
local Ray instance or on the cluster at ``--address``. Results equal the local engine's
for the same seeds (see :mod:`hpctl.engines.base` for why).

The settings live in :class:`hpctl.config.RunOptions` (``engine``, ``address``,
``cpus_per_trial``, ``gpus_per_trial``, ``probe_workers``), so ``spec.json`` records them
and ``--resume`` runs on the same engine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpctl import extras
from hpctl.engines.base import Engine, Outcome, RunWorkers
from hpctl.errors import ConfigError

__all__ = ["ENGINES", "ENGINE_KEYS", "Engine", "EngineOptions", "Outcome", "RunWorkers", "engine_options",
           "get_engine", "local_options", "run_workers"]

ENGINES = ("local", "ray")
#: the RunOptions fields that say how a run executes (never what it computes)
ENGINE_KEYS = ("engine", "address", "cpus_per_trial", "gpus_per_trial", "probe_workers")


@dataclass(frozen=True)
class EngineOptions:
    """Validated engine settings of a run."""

    engine: str = "local"
    address: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    probe_workers: int | None = None


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _number(key: str, value: Any, *, minimum: float, strict: bool) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{_flag(key)} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{_flag(key)} must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
    return float(value)


def engine_options(opts: Any) -> EngineOptions:
    """The engine settings of :class:`~hpctl.config.RunOptions` ``opts``, checked (one-line errors)."""
    name = getattr(opts, "engine", None) or "local"
    if not isinstance(name, str) or name not in ENGINES:
        raise ConfigError(f"unknown engine {name!r} (choose from {', '.join(ENGINES)})")
    address = getattr(opts, "address", None)
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(f"--address must be 'auto' or HOST[:PORT], got {address!r}")
    cpus = _number("cpus_per_trial", getattr(opts, "cpus_per_trial", None), minimum=0, strict=True)
    gpus = _number("gpus_per_trial", getattr(opts, "gpus_per_trial", None), minimum=0, strict=False)
    workers = getattr(opts, "probe_workers", None)
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int):
            raise ConfigError(f"--probe-workers must be an integer, got {workers!r}")
        if workers < 1:
            raise ConfigError(f"--probe-workers must be >= 1, got {workers}")
    out = EngineOptions(name, address.strip() if address else None, cpus, gpus, workers)
    if name == "local":
        for key in ENGINE_KEYS[1:]:
            if getattr(out, key) is not None:
                why = " (probe workers are Ray actors)" if key == "probe_workers" else ""
                raise ConfigError(f"{_flag(key)} needs --engine ray{why}")
    return out


def local_options(opts: Any) -> Any:
    """``opts`` with the local engine: what a worker runs (it never fans out again)."""
    return dataclasses.replace(opts, **{k: None for k in ENGINE_KEYS[1:]}, engine="local")


def get_engine(options: EngineOptions) -> Engine:
    """The engine object (for ``ray``: connected, resources checked)."""
    if options.engine == "local":
        from hpctl.engines.local import LocalEngine

        return LocalEngine()
    RayEngine = extras.import_for("hpctl.engines.ray", "--engine ray", "ray").RayEngine
    cpus = 1.0 if options.cpus_per_trial is None else options.cpus_per_trial
    gpus = 0.0 if options.gpus_per_trial is None else options.gpus_per_trial
    return RayEngine(options.address, cpus=cpus, gpus=gpus)


def run_workers(spec: Any, out_dir: Path, controller: Any = None, budget: int | None = None) -> RunWorkers | None:
    """The workers of one ``hpctl run`` (``env.workers``); None with the local engine.

    They start at once (building their replicas while the run sets itself up) when the run
    will use them: ``--probe-workers`` is given, or ``controller`` runs whole fine-tunes
    (a config with ``full_runs``, as the grid's: then no more workers than its points
    within ``budget``); otherwise on first use.
    """
    options = engine_options(spec.options)
    if options.engine == "local":
        return None
    engine = get_engine(options)
    worker_spec = dataclasses.replace(spec, options=local_options(spec.options))
    workers = RunWorkers(engine, worker_spec.to_json(), out_dir, probe_workers=options.probe_workers)
    # the replicas set themselves up while the run loads its own task
    if options.probe_workers:
        workers.start()
    elif getattr(getattr(controller, "config", None), "full_runs", False):
        points = controller.candidates(int(budget)) if budget is not None and hasattr(controller, "candidates") else None
        workers.start(None if points is None else min(len(points), int(budget)))
    return workers
