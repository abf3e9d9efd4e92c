"""One controller run over one plugin: build, learn, finish, record.

:func:`run` is what ``hpctl run`` calls; ``hpctl compare`` calls it once per controller
and seed under a parent MLflow run. What lands in the run directory, and how it is read
back for ``--resume``, is :mod:`hpctl.rundir`; the MLflow side is :mod:`hpctl.tracking`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpctl.config import build_dataclass
from hpctl.control_env import ControlEnv
from hpctl.controllers.base import Controller, get_controller, load_warm_start, save_controller_state
from hpctl.engines import engine_options, run_workers
from hpctl.plots import PlotProcess, plot_run
from hpctl.errors import ConfigError, HpctlError, ResumeError, Terminated, shorten
from hpctl.registry import load_plugin
from hpctl.rundir import (CHECKPOINT_EVERY_S, RESULT, SPEC, TRIAL_MARK, UNLOGGED, HistoryLog, RunLock, RunSpec,
                          atomic_write_json, load_checkpoint, lock_run_dir, mark_legacy, note_files,
                          open_run_dir, save_checkpoint)
from hpctl.seeding import seed_everything  # re-exported: hpctl.runner.seed_everything
from hpctl.tracking import PhaseRuns, RunRecorder, Tracker, end_quietly, log_outputs, warn

#: the most training steps a plugin's ``total_steps`` may ask for, checked before anything runs
#: (more than any real training run; the synthetic plugin simulates one step in ~10-30 us, so
#: it still finishes within the hour)
MAX_TOTAL_STEPS = 10**8

__all__ = ["RoundHook", "RunSpec", "build", "controller_settings", "run", "seed_everything", "steps_per_round"]


def steps_per_round(total_steps: int, budget: int, group_size: int) -> int:
    """Training steps between two rounds so that ``budget`` probes span ``total_steps``.

    A round spends ``group_size`` candidate probes plus one baseline probe.
    """
    rounds = max(1, int(budget) // (int(group_size) + 1))
    return max(1, int(total_steps) // rounds)


class RoundHook:
    """Called after every controller round: controller state to MLflow, and a checkpoint.

    The checkpoint is written at most every :data:`~hpctl.rundir.CHECKPOINT_EVERY_S`, and
    never more often than 20 times its own last cost (so writing it stays under ~5 % of the
    run even when a state is large): a resumed run redoes the (deterministic) rounds since,
    so nothing is lost or repeated, and microsecond probes are not slowed down. The events
    go to ``history.jsonl`` (appended), the checkpoint records how many it covers, so its size does not grow
    with the run.
    """

    def __init__(self, out_dir: Path, env: ControlEnv, recorder: RunRecorder, tracker: Tracker) -> None:
        self.out_dir, self.env, self.recorder, self.tracker = out_dir, env, recorder, tracker
        self.log = HistoryLog(out_dir)
        self.last_checkpoint = time.perf_counter()
        self.write_s = 0.0  # the last checkpoint's cost: checkpoints take at most ~5 % of the run

    def __call__(self, ctrl: Controller) -> None:
        answer = {f"controller/answer/{n}": float(v)
                  for n, v in zip(self.env.knob.component_names, ctrl.answer())}
        self.tracker.metrics({**answer, **{f"controller/{k}": v for k, v in ctrl.state().items()}}, self.env.probes)
        if time.perf_counter() - self.last_checkpoint >= max(CHECKPOINT_EVERY_S, 20 * self.write_s):
            self.recorder.checkpoint_flush()
            self.checkpoint(ctrl)

    def checkpoint(self, ctrl: Controller) -> None:
        """Append the new events to the log, then write the checkpoint that counts them."""
        t0 = time.perf_counter()
        self.log.append(self.recorder.history)
        save_checkpoint(self.out_dir, {
            "env": self.env.state_dict(), "controller": ctrl.state_dict(), "history_len": self.log.written,
            "logged": self.recorder.logged, "mlflow_run_id": self.tracker.run_id, "tracking_uri": self.tracker.uri})
        note_files(self.out_dir)  # what the run has written so far: what --overwrite may remove
        self.last_checkpoint = time.perf_counter()
        self.write_s = self.last_checkpoint - t0


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


def configure(spec: RunSpec, plugin=None):
    """Plugin, its config, the controller class and config, budget and group size.

    Every user option is checked here, before a run folder or a task exists. ``plugin``:
    ``spec.plugin`` already loaded (else it is looked up among the installed plugins).
    """
    plugin = load_plugin(spec.plugin) if plugin is None else plugin
    opts = spec.options
    config = build_dataclass(plugin.Config, spec.plugin_config, what=f"plugin {spec.plugin!r}")
    steps = getattr(config, "total_steps", None)
    if isinstance(steps, int) and not isinstance(steps, bool) and not 1 <= steps <= MAX_TOTAL_STEPS:
        raise ConfigError(f"total_steps (--total-steps) must be between 1 and {MAX_TOTAL_STEPS:,}, "
                          f"got {shorten(str(steps), 40)}")
    controller_name = opts.controller or plugin.default_controller
    ctrl_cls = get_controller(controller_name)
    ctrl_config = ctrl_cls.make_config(controller_settings(plugin, controller_name, opts.controller_config))
    budget = plugin.default_budget if opts.budget is None else opts.budget
    group = plugin.default_group_size if opts.group_size is None else opts.group_size
    return plugin, config, ctrl_cls, ctrl_config, budget, group


def build(spec: RunSpec, out_dir: Path, configured: tuple | None = None):
    """Plugin, task, env and controller for a spec (no tracking, no running).

    ``configured``: what :func:`configure` returned for this spec, if already called.
    """
    plugin, config, ctrl_cls, ctrl_config, budget, group = configured or configure(spec)
    opts = spec.options
    seed_everything(opts.seed)
    task = plugin.make_task(config, seed=opts.seed, out_dir=out_dir)
    env_kwargs = {"group_size": group, "commit_rule": opts.commit_rule, "reward": opts.reward}
    env_kwargs.update(plugin.env_kwargs(config))
    if "steps_per_round" not in env_kwargs:
        # the rounds share the steps after the warm-up (ControlEnv checks that one is left)
        warm = int(env_kwargs.get("warmup_steps", 0))
        env_kwargs["steps_per_round"] = steps_per_round(max(1, task.total_steps - warm), budget, group)
    env = ControlEnv(task, **env_kwargs)
    controller = ctrl_cls(env, config=ctrl_config, seed=opts.seed)
    try:
        if opts.warm_start:
            load_warm_start(opts.warm_start, controller)
        controller.check_budget(budget)  # a budget that allows no update fails before the run
    except BaseException:
        task.close()
        raise
    return plugin, config, task, env, controller, budget


def resolved_params(settings: dict[str, Any], *sources: Any) -> dict[str, Any]:
    """``settings`` as MLflow parameters: a value left unset (None) is the value the run chose,
    found under the same name in ``sources`` in turn (a mapping's key; an object's attribute,
    called when it is a method that takes no arguments, e.g. GRPO's ``group_size()``); one
    no source knows was truly not set (an optional feature off) and is left out, so no
    parameter reads 'None'."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            value = resolved_params(value)
        for source in sources if value is None else ():
            found = source.get(key) if isinstance(source, dict) else getattr(source, key, None)
            if callable(found):
                try:
                    found = found()
                except TypeError:  # a method that needs arguments: not a setting's value
                    found = None
            if found is not None and not callable(found):
                value = found
                break
        if value is not None:
            out[key] = value
    return out


def best_probe(history: list[dict[str, Any]], knob) -> dict[str, Any] | None:
    """The probe with the highest score (any kind, first of ties): one noisy measurement at
    the training state it was taken in. The learned value is what the final phase uses."""
    best = None
    for e in history:
        if e["event"] == "probe" and np.isfinite(e["score"]) and (best is None or e["score"] > best["score"]):
            best = e
    if best is None:
        return None
    return {"value": knob.to_dict(best["value"]), "score": float(best["score"]), "kind": best["kind"],
            "probe": int(best["probe"]), "step": int(best["step"])}


def run(spec: RunSpec, *, progress: Callable[[str, dict[str, Any]], None] | None = None,
        parent_run_id: str | None = None, resume_dir: str | Path | None = None,
        experiment: str | None = None, overwrite: bool = False, trial: bool = False,
        plugin=None, experiment_id: str | None = None, trial_token: str | None = None) -> dict[str, Any]:
    """Run one controller on one plugin; return the result dictionary.

    The run folder (``--out``, or ``resume_dir``) is locked for this run's life
    (:class:`hpctl.rundir.RunLock`): a second writer is refused in one line naming the
    holder. ``--out`` naming a folder that already holds a run is refused unless
    ``overwrite``, and one that is neither empty nor an hpctl run folder always is (see
    :func:`hpctl.rundir.open_run_dir`). ``trial_token``: the comparison starting this
    trial, written to the folder's :data:`~hpctl.rundir.TRIAL_MARK` once it is locked.
    ``trial``: the run is one of ``hpctl compare``'s trials, nested under the comparison's
    MLflow run. It then records nothing that repeats the comparison's or its own record:
    no ``run.png`` (``compare.png`` draws every trial; ``history.json`` holds what
    :func:`hpctl.plots.plot_run` draws from) and no nested run for the controller phase
    (its parameters are the trial's own, its time is the trial's ``time/controller_s``).
    Nested runs for a plugin's own phases stay. ``plugin``: ``spec.plugin`` already loaded,
    ``experiment_id``: the MLflow experiment's id (a comparison looks both up once for all
    its trials).

    ``progress(kind, info)`` receives ``("start", {"budget": ...})``, ``("probe", event)``
    and ``("phase", {"name": ...})`` for progress bars.
    """
    held: list[RunLock] = []
    try:
        return _run(spec, held, progress=progress, parent_run_id=parent_run_id, resume_dir=resume_dir,
                    experiment=experiment, overwrite=overwrite, trial=trial, plugin=plugin,
                    experiment_id=experiment_id, trial_token=trial_token)
    finally:
        for lock in held:
            note_files(lock.folder)
            lock.release()


def _run(spec: RunSpec, held: list[RunLock], *, progress, parent_run_id, resume_dir, experiment, overwrite, trial,
         plugin, experiment_id, trial_token) -> dict[str, Any]:
    """:func:`run`'s body; the run folder's lock goes into ``held`` as soon as it is taken."""
    t_start = time.perf_counter()
    opts = spec.options
    engine_options(opts)  # a bad engine setting fails before anything is written
    checkpoint: dict[str, Any] | None = None
    configured = None
    tracking_uri = opts.tracking_uri
    lock = None
    if resume_dir is not None:
        out_dir = Path(resume_dir)
        held.append(lock_run_dir(out_dir))  # before anything is read: another writer may be mid-round
        mark_legacy(out_dir)
        if (out_dir / RESULT).is_file():  # killed after its result was safe: finish the record
            return finish_record(out_dir, spec, experiment=experiment, plot=not trial)
        checkpoint = load_checkpoint(out_dir)
        tracking_uri = checkpoint.get("tracking_uri") or tracking_uri  # the store the run lives in
    else:
        configured = configure(spec, plugin)  # every option is checked before anything is written
        out_dir, lock = open_run_dir(opts.out, spec.plugin, configured[2].name, opts.seed,  # the controller that runs
                                     overwrite=overwrite, tracking_uri=tracking_uri)
        held.append(lock)
        if trial_token is not None:
            (out_dir / TRIAL_MARK).write_text(trial_token + "\n")
    try:
        plugin, config, task, env, controller, budget = build(spec, out_dir, configured or configure(spec, plugin))
    except HpctlError:
        if lock is not None and trial_token is None and not any(  # a user error: leave no empty run folder behind
                (out_dir / n).exists() for n in (SPEC, RESULT, "error.txt")):
            held.remove(lock)
            lock.discard()
        raise
    try:  # --engine ray: joined (a bad --address fails in seconds) and workers started before the task loads
        env.workers = workers = run_workers(spec, out_dir, controller, budget)
    except BaseException:
        task.close()
        raise
    names = task.knob.component_names
    run_id = checkpoint.get("mlflow_run_id") if checkpoint else None
    # run.png is drawn by a child that imports matplotlib while this process imports MLflow's store
    painter = None if trial else PlotProcess()
    try:  # a comparison's trial runs on without MLflow when the store stalled after the comparison opened
        tracker = (Tracker.open_or_offline if trial else Tracker)(tracking_uri, experiment or f"hpctl-{spec.plugin}",
                          run_name=f"{spec.plugin}/{controller.name}/seed{opts.seed}",
                          parent_run_id=parent_run_id, run_id=run_id, experiment_id=experiment_id,
                          tags={"hpctl.plugin": spec.plugin, "hpctl.controller": controller.name})
    except BaseException:
        _close(task, workers, painter)
        raise
    if checkpoint is not None:
        tracker.close_children("KILLED")  # nested phase runs the killed process left open
    recorder = RunRecorder(names, tracker)
    env.listeners.append(recorder)
    phases_runs = PhaseRuns(tracker, experiment or f"hpctl-{spec.plugin}")
    task.phase_listener = phases_runs
    if progress is not None:
        env.listeners.append(lambda e: progress("probe", e) if e["event"] == "probe" else None)

    on_round = RoundHook(out_dir, env, recorder, tracker)
    status, error = "FINISHED", None
    result: dict[str, Any] | None = None
    try:
        if checkpoint is None:
            atomic_write_json(out_dir / SPEC, spec.to_json())
            task_info = dict(task.describe())
            chosen = task_info.pop("resolved", None) or {}  # what the task chose for options left unset
            tracker.log_params({"plugin": spec.plugin, "controller": controller.name, "seed": opts.seed,
                                "budget": budget, "group_size": env.group_size,
                                "steps_per_round": env.steps_per_round, "commit_rule": env.commit_rule,
                                "reward": env.reward_mode,
                                "knob": {"name": task.knob.name, "low": task.knob.low, "high": task.knob.high,
                                         "dim": task.knob.dim},
                                # the task's resolved config (presets filled in) when it has one
                                "plugin_config": resolved_params(task_info.pop("config", dataclasses.asdict(config)),
                                                                 chosen, task_info),
                                "controller_config": resolved_params(dataclasses.asdict(controller.config),
                                                                     controller, env),
                                "task": resolved_params(task_info)})
            env.reset(seed=opts.seed)
            on_round.checkpoint(controller)
        else:
            controller.load_state_dict(checkpoint["controller"])
            env.load_state_dict(checkpoint["env"])
            recorder.history = on_round.log.restore(int(checkpoint["history_len"]))
            recorder.faults = sum(1 for e in recorder.history if e["event"] == "fault")
            # events the killed process had not flushed to MLflow yet are logged now
            for event in recorder.history[checkpoint.get("logged", 0):]:
                tracker.on_event(event, names)
            recorder.checkpoint_flush(min_interval=0.0)
        if progress is not None:
            progress("start", {"budget": budget, "done": env.probes, "out_dir": str(out_dir)})

        t0 = time.perf_counter()
        try:
            learned = controller.run(budget, on_round)
        finally:
            if workers is not None:
                workers.close()  # the probe workers' replicas are not needed for the final phase
        learned = task.knob.validate(learned)
        t_control = time.perf_counter() - t0
        if env.probes and recorder.faults >= env.probes:
            first = next(e for e in recorder.history if e["event"] == "fault")
            raise HpctlError(f"all {env.probes} probes failed, so nothing was learned; the first: "
                             f"{shorten(first['error'], 200)}")
        state_files = save_controller_state(controller, out_dir)  # what --warm-start reads
        if progress is not None:
            progress("phase", {"name": "final"})
        t0 = time.perf_counter()
        metrics = dict(task.finish(learned))
        t_final = time.perf_counter() - t0
        optimum = task.optimum(1.0)
        if optimum is not None:
            metrics.setdefault("distance", float(np.linalg.norm(learned - optimum)))
        phases = {"controller_s": t_control, "final_s": t_final}
        phases.update(task.phase_seconds)
        if workers is not None:  # compute seconds of grid points run on workers, summed
            phases.update({f"workers_{k}": v for k, v in workers.phase_seconds.items()})
        result = {
            "plugin": spec.plugin,
            "controller": controller.name,
            "seed": opts.seed,
            "learned": task.knob.to_dict(learned),
            "best_probe": best_probe(recorder.history, task.knob),
            "updates": int(controller.state().get("updates", 0)),
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
            "artifacts": [str(p) for p in task.artifacts()],
            "controller_files": [p.name for p in state_files],
            # what ran: the plugin's config with its preset filled in (spec.json keeps what was asked)
            "plugin_config": dict(task.describe()).get("config", dataclasses.asdict(config)),
        }
        on_round.log.append(recorder.history)  # complete before the result, for finish_record
        atomic_write_json(out_dir / RESULT, result)  # the result is safe before anything else can fail
    except KeyboardInterrupt as exc:
        # The checkpoint of the last finished round stays: it is consistent, a mid-round state is not.
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)"
        status, error = "KILLED", f"{how}; resume with --resume {out_dir}"
        raise
    except HpctlError as exc:
        status, error = "FAILED", str(exc)
        raise
    except Exception as exc:
        status, error = "FAILED", f"{type(exc).__name__}: {exc}"
        try:  # a folder that cannot take error.txt (read-only, full) must not hide the error itself
            (out_dir / "error.txt").write_text(traceback.format_exc())
            exc.hpctl_error_file = str(out_dir / "error.txt")
        except OSError:  # a full disk: no error.txt rather than an empty or cut one
            try:
                (out_dir / "error.txt").unlink(missing_ok=True)
            except OSError:
                pass
        raise
    finally:
        if result is None:  # failed or interrupted: record it, then let the error through
            try:
                end_quietly(tracker, status, error)
                note_unlogged(tracker, out_dir, None)
            finally:
                _close(task, workers, painter)
    # The run is finished and its result is on disk: from here on, a failure to upload
    # or plot is recorded as a warning tag and never turns the run into a crash.
    try:
        _record_outputs(tracker, recorder, result, out_dir, names, spec, learned, optimum, plot=not trial,
                        painter=painter)
    except Exception as exc:  # noqa: BLE001
        warn(tracker, f"outputs not fully recorded: {type(exc).__name__}: {exc}")
    finally:
        try:
            end_quietly(tracker, "FINISHED", None)
            note_unlogged(tracker, out_dir, result)
        finally:
            _close(task, workers, painter)
    return result


def note_unlogged(tracker: Tracker, out_dir: Path, result: dict[str, Any] | None, result_file: str = RESULT) -> None:
    """Write down in the run folder what MLflow did not get (a stalled, dead or full store):
    :data:`~hpctl.rundir.UNLOGGED`, and ``result["mlflow_unlogged"]`` in a finished run's
    ``result_file``. The tracker has said it in one line on stderr."""
    info = tracker.unlogged()
    try:
        if info is None:  # everything reached MLflow (a resume re-logs what a killed process could not)
            (out_dir / UNLOGGED).unlink(missing_ok=True)
            return
        atomic_write_json(out_dir / UNLOGGED, info)
        if result is not None:
            result["mlflow_unlogged"] = info
            atomic_write_json(out_dir / result_file, result)
    except OSError:  # a full or read-only folder: the line on stderr stays
        pass


def _close(task, workers, painter: PlotProcess | None = None) -> None:
    """Release the task, the engine's workers and the plot child (idempotent)."""
    try:
        if painter is not None:
            painter.close()
        if workers is not None:
            workers.close()
    finally:
        task.close()


def finish_record(out_dir: Path, spec: RunSpec, *, experiment: str | None = None, plot: bool = True) -> dict[str, Any]:
    """``--resume`` of a run killed after its ``result.json`` was written.

    The result is final; what may be missing is the MLflow side (outputs, metrics, the
    run's status). Record it from the run directory and close the run and the nested
    runs the killed process left open. A run that is already closed has nothing to resume.
    """
    try:
        result = json.loads((out_dir / RESULT).read_text())
        if not isinstance(result, dict):
            raise ValueError(f"it holds a JSON {type(result).__name__}, not a run's result")
        run_id, uri = result["mlflow_run_id"], result["tracking_uri"]
        if not isinstance(run_id, str) or not (uri is None or isinstance(uri, str)):
            raise ValueError("its mlflow_run_id or tracking_uri is not a string")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResumeError(f"{str(out_dir / RESULT)!r} cannot be read: {shorten(str(exc), 200)}") from None
    tracker = Tracker(uri, experiment or f"hpctl-{spec.plugin}", run_id=run_id, reopen=False)
    if tracker.status() != "RUNNING":
        raise ResumeError(f"the run in {str(out_dir)!r} has finished ({RESULT} exists, MLflow run "
                          f"{tracker.status()}); nothing to resume")
    names = tuple(result["learned"])
    history = HistoryLog(out_dir).restore(None)
    logged = 0
    try:
        logged = int(load_checkpoint(out_dir).get("logged", 0))
    except ResumeError:
        pass
    recorder = RunRecorder(names, tracker)
    for event in history[logged:]:
        recorder(event)
    recorder.history = history
    learned = np.array(list(result["learned"].values()))
    optimum = None if result.get("optimum") is None else np.array(list(result["optimum"].values()))
    try:
        _record_outputs(tracker, recorder, result, out_dir, names, spec, learned, optimum, plot=plot)
    except Exception as exc:  # noqa: BLE001
        warn(tracker, f"outputs not fully recorded: {type(exc).__name__}: {exc}")
    finally:
        tracker.close_children("KILLED")
        end_quietly(tracker, "FINISHED", None)
        note_unlogged(tracker, out_dir, None)
    return result


def _record_outputs(tracker: Tracker, recorder: RunRecorder, result: dict[str, Any], out_dir: Path,
                    names: tuple[str, ...], spec: RunSpec, learned: np.ndarray, optimum: np.ndarray | None,
                    *, plot: bool = True, painter: PlotProcess | None = None) -> None:
    # final-phase metrics keep the names the task gave them (test_accuracy, f1, distance, ...)
    tracker.metrics(result["metrics"], result["probes"])
    tracker.metrics({f"learned/{k}": v for k, v in result["learned"].items()}, result["probes"])
    tracker.set_tags({"learned": ", ".join(f"{k}={v:.6g}" for k, v in result["learned"].items())})
    tracker.metrics({f"time/{k}": v for k, v in result["phases"].items()})
    atomic_write_json(out_dir / "history.json", recorder.history)
    if plot:
        try:
            draw = painter.plot_run if painter is not None else plot_run
            png = draw(recorder.history, names, out_dir / "run.png",
                       title=f"{spec.plugin} / {result['controller']} / seed {result['seed']}",
                       optimum=optimum, learned=learned)
            tracker.artifact(png)
        except Exception as exc:  # noqa: BLE001 - a plot never costs a finished result
            warn(tracker, f"plot failed: {exc}")
    tracker.artifact(out_dir / RESULT)
    tracker.artifact(out_dir / "history.json")
    for name in result.get("controller_files", []):  # the controller state, for --warm-start
        tracker.artifact(out_dir / name)
    log_outputs(tracker, [Path(p) for p in result.get("artifacts", [])])
