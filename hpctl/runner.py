"""One controller run over one plugin: build, learn, finish, record.

:func:`run` is what ``hpctl run`` calls; ``hpctl compare`` calls it once per controller
and seed under a parent MLflow run. A run directory holds ``spec.json`` (what was asked),
``checkpoint.pt`` (after every round, written atomically), ``result.json`` (written as
soon as the result exists, before plots and artifact uploads) and ``run.png``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import random
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpctl.controllers.base import Controller, get_controller
from hpctl.config import RunOptions, build_dataclass
from hpctl.control_env import ControlEnv
from hpctl.errors import ConfigError, HpctlError, ResumeError
from hpctl.registry import load_plugin
from hpctl.tracking import Tracker

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


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
    if isinstance(o, Path):
        return str(o)
    return str(o)


class RunRecorder:
    """Env listener: keeps the history (for plots, checkpoints) and forwards to MLflow."""

    def __init__(self, names: tuple[str, ...], tracker: Tracker | None) -> None:
        self.names = names
        self.tracker = tracker
        self.history: list[dict[str, Any]] = []
        self.faults = 0
        self.logged = 0  # history events already flushed to MLflow (for resume)
        self.last_flush = time.perf_counter()

    def checkpoint_flush(self, min_interval: float = 2.0) -> None:
        """Flush queued metrics at a checkpoint, at most every ``min_interval`` seconds."""
        if self.tracker is not None and time.perf_counter() - self.last_flush >= min_interval:
            try:
                self.tracker.flush()
            except Exception as exc:  # noqa: BLE001 - a store hiccup must not stop training
                _warn(self.tracker, f"metrics flush failed: {type(exc).__name__}: {exc}")
                return  # `logged` stays: those events are logged again on resume
            self.logged = len(self.history)
            self.last_flush = time.perf_counter()

    def __call__(self, event: dict[str, Any]) -> None:
        self.history.append(event)
        if event["event"] == "fault":
            self.faults += 1
        if self.tracker is not None:
            self.tracker.on_event(event, self.names)


def controller_settings(plugin, name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The plugin's defaults for controller ``name``, then the user's settings.

    A key ``"ctrl.key"`` applies only to controller ``ctrl`` (so one config can tune
    several controllers for ``hpctl compare``); a plain key applies to this controller.
    """
    settings = dict(plugin.controller_defaults.get(name, {}))
    for key, value in given.items():
        scope, dot, sub = key.partition(".")
        if not dot:
            settings[key] = value
        elif scope == name:
            settings[sub] = value
    return settings


def build(spec: RunSpec, out_dir: Path):
    """Plugin, task, env and controller for a spec (no tracking, no running)."""
    plugin = load_plugin(spec.plugin)
    opts = spec.options
    config = build_dataclass(plugin.Config, spec.plugin_config, what=f"plugin {spec.plugin!r}")
    controller_name = opts.controller or plugin.default_controller
    ctrl_cls = get_controller(controller_name)
    ctrl_config = ctrl_cls.make_config(controller_settings(plugin, controller_name, opts.controller_config))
    budget = plugin.default_budget if opts.budget is None else int(opts.budget)
    if budget <= 0:
        raise ConfigError(f"budget must be > 0 probes, got {budget}")
    group = plugin.default_group_size if opts.group_size is None else int(opts.group_size)
    if group < 2:
        raise ConfigError(f"group size must be >= 2, got {group}")
    seed_everything(opts.seed)
    task = plugin.make_task(config, seed=opts.seed, out_dir=out_dir)
    env_kwargs = {"group_size": group, "commit_rule": opts.commit_rule, "reward": opts.reward}
    env_kwargs.update(plugin.env_kwargs(config))
    if "steps_per_round" not in env_kwargs:
        rounds = max(1, budget // (group + 1))  # +1: the baseline probe of each round
        env_kwargs["steps_per_round"] = max(1, task.total_steps // rounds)
    env = ControlEnv(task, **env_kwargs)
    controller = ctrl_cls(env, config=ctrl_config, seed=opts.seed)
    return plugin, config, task, env, controller, budget


def run(spec: RunSpec, *, progress: Callable[[str, dict[str, Any]], None] | None = None,
        parent_run_id: str | None = None, resume_dir: str | Path | None = None,
        experiment: str | None = None) -> dict[str, Any]:
    """Run one controller on one plugin; return the result dictionary.

    ``progress(kind, info)`` receives ``("start", {"budget": ...})``, ``("probe", event)``
    and ``("phase", {"name": ...})`` for progress bars.
    """
    t_start = time.perf_counter()
    opts = spec.options
    checkpoint: dict[str, Any] | None = None
    tracking_uri = opts.tracking_uri
    if resume_dir is not None:
        out_dir = Path(resume_dir)
        checkpoint = load_checkpoint(out_dir, spec)
        tracking_uri = checkpoint.get("tracking_uri") or tracking_uri  # the store the run lives in
    else:
        out_dir = prepare_out_dir(opts.out, spec.plugin, opts.controller or "default", opts.seed)
    plugin, config, task, env, controller, budget = build(spec, out_dir)
    names = task.knob.component_names
    run_id = checkpoint.get("mlflow_run_id") if checkpoint else None
    try:
        tracker = Tracker(tracking_uri, experiment or f"hpctl-{spec.plugin}",
                          run_name=f"{spec.plugin}/{controller.name}/seed{opts.seed}",
                          parent_run_id=parent_run_id, run_id=run_id,
                          tags={"hpctl.plugin": spec.plugin, "hpctl.controller": controller.name})
    except BaseException:
        task.close()
        raise
    recorder = RunRecorder(names, tracker)
    env.listeners.append(recorder)
    phases_runs = PhaseRuns(tracker, experiment or f"hpctl-{spec.plugin}")
    task.phase_listener = phases_runs
    if progress is not None:
        env.listeners.append(lambda e: progress("probe", e) if e["event"] == "probe" else None)

    status, error = "FINISHED", None
    result: dict[str, Any] | None = None
    try:
        if checkpoint is None:
            atomic_write_json(out_dir / SPEC, spec.to_json())
            tracker.log_params({"plugin": spec.plugin, "controller": controller.name, "seed": opts.seed,
                                "budget": budget, "group_size": env.group_size,
                                "steps_per_round": env.steps_per_round, "commit_rule": env.commit_rule,
                                "reward": env.reward_mode,
                                "knob": {"name": task.knob.name, "low": task.knob.low, "high": task.knob.high,
                                         "dim": task.knob.dim},
                                "plugin_config": dataclasses.asdict(config),
                                "controller_config": dataclasses.asdict(controller.config),
                                "task": task.describe()})
            env.reset(seed=opts.seed)
            save_checkpoint(out_dir, env, controller, recorder, tracker)
        else:
            controller.load_state_dict(checkpoint["controller"])
            env.load_state_dict(checkpoint["env"])
            recorder.history = list(checkpoint["history"])
            recorder.faults = sum(1 for e in recorder.history if e["event"] == "fault")
            # events the killed process had not flushed to MLflow yet are logged now
            for event in recorder.history[checkpoint.get("logged", 0):]:
                tracker.on_event(event, names)
            recorder.checkpoint_flush(min_interval=0.0)
        if progress is not None:
            progress("start", {"budget": budget, "done": env.probes, "out_dir": str(out_dir)})

        last_checkpoint = [time.perf_counter()]

        def on_round(ctrl: Controller) -> None:
            step = env.probes
            tracker.metrics({f"controller/{k}": v for k, v in ctrl.state().items()}, step)
            # At most every CHECKPOINT_EVERY_S: a resumed run redoes the (deterministic) rounds
            # since, so nothing is lost or repeated, and microsecond probes are not slowed down.
            if time.perf_counter() - last_checkpoint[0] >= CHECKPOINT_EVERY_S:
                recorder.checkpoint_flush()
                save_checkpoint(out_dir, env, ctrl, recorder, tracker)
                last_checkpoint[0] = time.perf_counter()

        t0 = time.perf_counter()
        with phases_runs.phase("controller"):
            learned = controller.run(budget, on_round)
            learned = task.knob.validate(learned)
        t_control = time.perf_counter() - t0
        if progress is not None:
            progress("phase", {"name": "final"})
        t0 = time.perf_counter()
        metrics = dict(task.finish(learned))
        t_final = time.perf_counter() - t0
        optimum = task.optimum(1.0)
        if optimum is not None:
            metrics.setdefault("distance", float(np.linalg.norm(learned - optimum)))
        phases = {"controller_s": t_control, "final_s": t_final}
        phases.update(getattr(task, "phase_seconds", {}) or {})
        result = {
            "plugin": spec.plugin,
            "controller": controller.name,
            "seed": opts.seed,
            "learned": task.knob.to_dict(learned),
            "probes": env.probes,
            "budget": budget,
            "faults": recorder.faults,
            "wall_s": time.perf_counter() - t_start,
            "phases": phases,
            "metrics": metrics,
            "optimum": None if optimum is None else task.knob.to_dict(optimum),
            "controller_state": controller.state(),
            "mlflow_run_id": tracker.run_id,
            "tracking_uri": tracker.uri,
            "out_dir": str(out_dir),
            "tracking_s": tracker.seconds - tracker.setup_seconds,
        }
        atomic_write_json(out_dir / RESULT, result)  # the result is safe before anything else can fail
    except KeyboardInterrupt:
        # The checkpoint of the last finished round stays: it is consistent, a mid-round state is not.
        status, error = "KILLED", "interrupted (Ctrl-C); resume with --resume " + str(out_dir)
        raise
    except HpctlError as exc:
        status, error = "FAILED", str(exc)
        raise
    except Exception as exc:
        status, error = "FAILED", f"{type(exc).__name__}: {exc}"
        (out_dir / "error.txt").write_text(traceback.format_exc())
        raise
    finally:
        if result is None:  # failed or interrupted: record it, then let the error through
            _end_quietly(tracker, status, error)
            task.close()
    # The run is finished and its result is on disk: from here on, a failure to upload
    # or plot is recorded as a warning tag and never turns the run into a crash.
    try:
        _record_outputs(tracker, task, recorder, result, out_dir, names, spec, learned, optimum)
    except Exception as exc:  # noqa: BLE001
        _warn(tracker, f"outputs not fully recorded: {type(exc).__name__}: {exc}")
    finally:
        _end_quietly(tracker, "FINISHED", None)
        task.close()
    return result


class PhaseRuns:
    """Nested MLflow runs, one per long phase (the controller run, a plugin's adapter training).

    Used as a task's ``phase_listener``; each child run gets the phase's wall time and
    whatever counters the plugin reports. Tracking problems here only cost the child run.
    """

    def __init__(self, parent: Tracker, experiment: str) -> None:
        self.parent = parent
        self.experiment = experiment
        self.open: dict[str, Tracker] = {}

    def __call__(self, name: str, event: str, info: dict[str, Any]) -> None:
        try:
            if event == "start":
                self.open[name] = Tracker(self.parent.uri, self.experiment, run_name=name,
                                          parent_run_id=self.parent.run_id, tags={"hpctl.phase": name})
            elif name in self.open:
                child = self.open.pop(name)
                child.metrics({k: v for k, v in info.items() if isinstance(v, (int, float))})
                child.end(str(info.get("status", "FINISHED")))
        except Exception as exc:  # noqa: BLE001
            _warn(self.parent, f"nested run for phase {name!r} not recorded: {exc}")

    @contextlib.contextmanager
    def phase(self, name: str):
        t0, status = time.perf_counter(), "FAILED"
        self(name, "start", {})
        try:
            yield
            status = "FINISHED"
        finally:
            self(name, "end", {"seconds": time.perf_counter() - t0, "status": status})


def _warn(tracker: Tracker, message: str) -> None:
    try:
        tracker.set_tags({"warning": message[:500]})
    except Exception:  # noqa: BLE001 - the store itself is failing; the run directory has everything
        pass


def _end_quietly(tracker: Tracker, status: str, error: str | None) -> None:
    try:
        tracker.end(status, error)
    except Exception:  # noqa: BLE001 - never mask the run's own outcome with a store failure
        pass


def _record_outputs(tracker: Tracker, task, recorder: RunRecorder, result: dict[str, Any], out_dir: Path,
                    names: tuple[str, ...], spec: RunSpec, learned: np.ndarray, optimum: np.ndarray | None) -> None:
    tracker.metrics({f"test/{k}": v for k, v in result["metrics"].items()}, result["probes"])
    tracker.metrics({f"time/{k}": v for k, v in result["phases"].items()})
    atomic_write_json(out_dir / "history.json", recorder.history)
    try:
        from hpctl.plots import plot_run

        png = plot_run(recorder.history, names, out_dir / "run.png",
                       title=f"{spec.plugin} / {result['controller']} / seed {result['seed']}",
                       optimum=optimum, learned=learned)
        tracker.artifact(png)
    except Exception as exc:  # noqa: BLE001 - a plot never costs a finished result
        _warn(tracker, f"plot failed: {exc}")
    tracker.artifact(out_dir / RESULT)
    tracker.artifact(out_dir / "history.json")
    log_outputs(tracker, getattr(task, "artifacts", lambda: [])())


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def log_outputs(tracker: Tracker, paths: list[Path]) -> None:
    """Upload a task's outputs (e.g. adapters) under ``outputs/<name>``.

    Outputs over ``$HPCTL_MAX_ARTIFACT_MB`` (default 100) stay only in the run directory,
    and a tag records where, so a large exact adapter is not copied into the store on
    every run.
    """
    limit = float(os.environ.get("HPCTL_MAX_ARTIFACT_MB", "100"))
    for path in map(Path, paths):
        size = _size_mb(path)
        if size > limit:
            tracker.set_tags({f"output.{path.name}": f"{path.resolve()} ({size:.0f} MB, over "
                                                     f"HPCTL_MAX_ARTIFACT_MB={limit:g}: not uploaded)"})
        elif path.is_dir():
            tracker.artifact(path, f"outputs/{path.name}")
        else:
            tracker.artifact(path, "outputs")


def save_checkpoint(out_dir: Path, env: ControlEnv, controller: Controller, recorder: RunRecorder,
                    tracker: Tracker) -> None:
    """Write ``checkpoint.pt`` atomically (pickle; tensors in task snapshots pickle as well)."""
    state = {"env": env.state_dict(), "controller": controller.state_dict(), "history": recorder.history,
             "logged": recorder.logged, "mlflow_run_id": tracker.run_id, "tracking_uri": tracker.uri}
    atomic_write_bytes(out_dir / CHECKPOINT, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(out_dir: Path, spec: RunSpec) -> dict[str, Any]:
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


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
