"""``hpctl compare``: several controllers, same plugin, same budget and seeds.

Each (controller, seed) is an ordinary :func:`hpctl.runner.run` nested under one parent
MLflow run: a *trial*, which the engine runs (``--engine local``: here, one after another;
``--engine ray``: one Ray task each, in parallel; see :mod:`hpctl.engines`). A trial whose
worker is lost is retried by the engine and resumes from its checkpoint, in the same
MLflow child run; the results do not depend on the engine. The summary gives, per controller, the median and inter-quartile range over
seeds of the learned value, the primary test metric, the distance to the optimum (where
the plugin knows it), the probes spent and the wall time.

Nothing is left RUNNING in MLflow: SIGTERM or Ctrl-C ends the running trial's run and the
parent KILLED; after a SIGKILL (or a lost machine), ``hpctl compare --resume DIR`` reuses
the finished trials, resumes the others from their checkpoints and closes the parent run.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpctl.controllers.base import get_controller
from hpctl.config import MAX_SEED, RunOptions
from hpctl.engines import Outcome, engine_options, get_engine, local_options
from hpctl.engines.base import raise_user_error
from hpctl.errors import ConfigError, ResumeError, Terminated, one_line, shorten
from hpctl.registry import load_plugin
from hpctl.rundir import (CHECKPOINT, RESULT, TRIAL_MARK, RunSpec, atomic_write_json, lock_run_dir, note_files,
                          open_run_dir)
from hpctl.runner import configure, note_unlogged, run
from hpctl.tracking import Tracker, end_quietly


#: the most seeds ``hpctl compare --seeds`` runs per controller
MAX_SEEDS = 10_000


def median_iqr(values: list[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"median": float("nan"), "q25": float("nan"), "q75": float("nan")}
    q25, med, q75 = np.percentile(arr, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75)}


def trajectory(history: list[dict[str, Any]], learned: list[float], budget: int) -> list[tuple[int, list[float]]]:
    """The value a controller stands at over probes.

    Training controllers: the committed value (from the starting value on). Search
    controllers, which never commit: the best value probed so far. Both end at the answer.
    """
    probes = [e for e in history if e["event"] == "probe"]
    commits = [e for e in history if e["event"] == "commit"]
    traj: list[tuple[int, list[float]]] = []
    if commits:
        if probes and "current" in probes[0]:
            traj.append((0, [float(v) for v in probes[0]["current"]]))
        traj += [(e["probe"], [float(v) for v in e["value"]]) for e in commits]
    else:
        best = -float("inf")
        for e in probes:
            if e["kind"] == "candidate" and np.isfinite(e["score"]) and e["score"] > best:
                best = e["score"]
                traj.append((e["probe"], [float(v) for v in e["value"]]))
    traj.append((budget, list(learned)))
    return traj


def settings_for(ctrl: str, base: RunOptions) -> dict[str, Any]:
    """Dotted settings (``grid.k=4``) go to their controller; plain ones to ``--controller`` only."""
    return {k: v for k, v in base.controller_config.items()
            if ("." in k and k.split(".", 1)[0] == ctrl) or ("." not in k and ctrl == base.controller)}


def run_trial(spec_json: dict[str, Any], parent_run_id: str | None, token: str,
              progress: Callable[[str, dict[str, Any]], None] | None = None, plugin=None,
              experiment_id: str | None = None) -> dict[str, Any]:
    """One (controller, seed) run of a comparison: its result and history.

    Runs wherever the engine puts it, so it returns the history rather than leaving the
    comparison to read another machine's disk. If this comparison (``token``) already
    started the trial - a retry after its worker was lost - it resumes from the trial's
    checkpoint into the same MLflow run, or returns the result the lost worker wrote.
    A trial records nothing that repeats the comparison's record (see ``trial`` in
    :func:`hpctl.runner.run`): no ``run.png`` of its own (``compare.png`` shows every
    trial) and no nested run for its controller phase. ``progress``, ``plugin`` and
    ``experiment_id`` (the plugin and the MLflow experiment, looked up once by the
    comparison) come only to trials run in the comparison's own process.
    """
    spec = RunSpec.from_json(spec_json)
    out_dir = Path(spec.options.out)
    mark = out_dir / TRIAL_MARK
    retry = mark.is_file() and mark.read_text().strip() == token
    if retry and (out_dir / RESULT).is_file():
        try:  # a trial killed after its result was written: its MLflow record is completed and closed
            result = run(spec, resume_dir=out_dir, parent_run_id=parent_run_id, trial=True, plugin=plugin,
                         experiment_id=experiment_id)
        except ResumeError:  # its run has ended: the result stands as written
            result = json.loads((out_dir / RESULT).read_text())
    elif retry and (out_dir / CHECKPOINT).is_file():
        result = run(spec, resume_dir=out_dir, parent_run_id=parent_run_id, progress=progress, trial=True,
                     plugin=plugin, experiment_id=experiment_id)
    else:  # a retry lost before its first checkpoint starts this trial's own folder again
        result = run(spec, parent_run_id=parent_run_id, progress=progress, trial=True, plugin=plugin,
                     experiment_id=experiment_id, overwrite=retry, trial_token=token)
    hist_file = out_dir / "history.json"  # the trial's folder as this comparison names it (resumed from elsewhere)
    history = json.loads(hist_file.read_text()) if hist_file.is_file() else []
    return {"result": result, "history": history}


#: what a comparison's folder holds for ``hpctl compare --resume``: its own spec (the
#: comparison's options, the parent run and the token that marks its trials' folders)
COMPARE_SPEC = "spec.json"


def _check_compare(plugin_name: str, controllers: list[str], seeds: int, base: RunOptions,
                   plugin_config: dict[str, Any]):
    """Every option of the comparison and of each of its trials checked; the plugin loaded."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if seeds > MAX_SEEDS:  # checked before a trial list the size of the count is built
        raise ConfigError(f"--seeds runs at most {MAX_SEEDS:,} seeds per controller, got {seeds:,}")
    if base.seed + seeds - 1 > MAX_SEED:
        raise ConfigError(f"--seeds: the last seed, {base.seed + seeds - 1}, is above the largest, {MAX_SEED}")
    if not controllers:
        raise ConfigError("--controllers is empty")
    for c in controllers:
        get_controller(c)  # fail fast on a typo, before any run
    plain = sorted(k for k in base.controller_config if "." not in k)
    if plain and base.controller not in controllers:
        raise ConfigError(f"setting {plain[0]!r} names no controller: write it as CONTROLLER.{plain[0]} "
                          f"(e.g. --set {controllers[0]}.{plain[0]}=...)")
    options = engine_options(base)
    if options.probe_workers is not None:
        raise ConfigError("--probe-workers is for `hpctl run`; `hpctl compare --engine ray` runs whole trials in parallel")
    plugin = load_plugin(plugin_name)
    for ctrl in controllers:  # every trial's options (--total-steps' bound too) before anything is made
        configure(RunSpec(plugin=plugin_name, options=dataclasses.replace(
            base, controller=ctrl, controller_config=settings_for(ctrl, base)), plugin_config=plugin_config), plugin)
    return plugin, options


def compare(plugin_name: str, controllers: list[str], seeds: int, base: RunOptions, plugin_config: dict[str, Any],
            *, out: str | None = None, on_run: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    """Run every (controller, seed) trial and summarise them (module docstring).

    The comparison's folder gets its :data:`COMPARE_SPEC` before any trial starts, so a
    comparison killed at any moment (SIGKILL included) is finished by :func:`resume_compare`.
    """
    t_start = time.perf_counter()
    plugin, options = _check_compare(plugin_name, controllers, seeds, base, plugin_config)
    engine = get_engine(options)  # --engine ray: joined (or started) before anything is recorded
    out_dir, lock = open_run_dir(out or f"runs/compare-{plugin_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                 plugin_name, "compare", base.seed, command="compare", tracking_uri=base.tracking_uri)
    token = uuid.uuid4().hex
    spec = {**RunSpec(plugin=plugin_name, options=base, plugin_config=plugin_config, command="compare").to_json(),
            "compare": {"controllers": controllers, "seeds": seeds, "token": token, "mlflow_run_id": None,
                        "tracking_uri": base.tracking_uri}}
    parent = None
    try:
        # the spec first, the parent run (tagged with the token) next: a kill between the two is resumable too
        atomic_write_json(out_dir / COMPARE_SPEC, spec)
        parent = _parent_tracker(base.tracking_uri, plugin_name, engine.name, token)
        spec["compare"].update(mlflow_run_id=parent.run_id, tracking_uri=parent.uri)
        atomic_write_json(out_dir / COMPARE_SPEC, spec)
    except BaseException as exc:
        if parent is not None:
            end_quietly(parent, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", one_line(exc))
        (out_dir / COMPARE_SPEC).unlink(missing_ok=True)
        lock.discard()
        raise
    return _run_comparison(plugin, plugin_name, controllers, seeds, base, plugin_config, engine, out_dir, lock,
                           parent, token, on_run=on_run, t_start=t_start, resumed=False)


def _parent_tracker(uri: str | None, plugin_name: str, engine: str, token: str) -> Tracker:
    return Tracker(uri, f"hpctl-{plugin_name}", run_name=f"compare {plugin_name}",
                   tags={"hpctl.plugin": plugin_name, "hpctl.command": "compare", "hpctl.engine": engine,
                         "hpctl.compare_token": token})


def resume_compare(out_dir: str | Path, *, on_run: Callable[[str, int], Any] | None = None,
                   engine_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``hpctl compare --resume DIR``: finish a comparison that was killed (SIGKILL, a lost machine).

    Trials that finished are reused (a trial killed after its result was written has its
    MLflow record completed), trials with a checkpoint resume from it, the others run
    from the start; then the summary is made and the comparison's MLflow run (the same
    parent run) is closed. Trial runs the killed process left open before their first
    checkpoint are closed KILLED. ``engine_settings``: where the trials run now (the
    ``--engine`` flags; the results do not depend on it).
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    spec_file = out_dir / COMPARE_SPEC
    try:
        raw = json.loads(spec_file.read_text())
        if not isinstance(raw, dict):
            raise TypeError(f"it holds a JSON {type(raw).__name__}")
    except FileNotFoundError:
        raise ResumeError(f"{str(out_dir)!r} is not a comparison folder (no {COMPARE_SPEC})") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ResumeError(f"{str(spec_file)!r} cannot be read: {shorten(str(exc), 200)}") from None
    if raw.get("command") != "compare" or not isinstance(raw.get("compare"), dict):
        raise ResumeError(f"{str(out_dir)!r} holds `hpctl {raw.get('command', 'run')}`, not a comparison "
                          f"(resume it with hpctl {raw.get('command', 'run')} {raw.get('plugin', 'PLUGIN')} --resume)")
    try:
        spec = RunSpec.from_json(raw)
        saved = raw["compare"]
        controllers, seeds = [str(c) for c in saved["controllers"]], int(saved["seeds"])
        token = str(saved["token"])
        run_id = None if saved["mlflow_run_id"] is None else str(saved["mlflow_run_id"])
        uri = None if saved["tracking_uri"] is None else str(saved["tracking_uri"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeError(f"{str(spec_file)!r} is not a comparison's spec: {shorten(one_line(exc), 200)}") from None
    base = dataclasses.replace(spec.options, tracking_uri=uri, out=str(out_dir), **(engine_settings or {}))
    plugin, options = _check_compare(spec.plugin, controllers, seeds, base, spec.plugin_config)
    lock = lock_run_dir(out_dir, what="compare")  # one writer: a comparison still running is refused here
    try:
        engine = get_engine(options)
        if run_id is None:  # killed before its parent run was recorded: no trial has started
            parent = _parent_tracker(uri, spec.plugin, engine.name, token)
            _close_other_parents(parent, token)
            raw["compare"].update(mlflow_run_id=parent.run_id, tracking_uri=parent.uri)
            atomic_write_json(spec_file, raw)
        else:
            parent = Tracker(uri, f"hpctl-{spec.plugin}", run_id=run_id, reopen=False)
            was = parent.status()
            if was != "RUNNING" and (out_dir / "compare.json").is_file():
                raise ResumeError(f"the comparison in {str(out_dir)!r} has finished (compare.json exists, MLflow "
                                  f"run {was}); nothing to resume")
            parent.client.update_run(run_id, status="RUNNING")  # until it ends below
    except BaseException:
        lock.release()
        raise
    return _run_comparison(plugin, spec.plugin, controllers, seeds, base, spec.plugin_config, engine, out_dir,
                           lock, parent, token, on_run=on_run, t_start=t_start, resumed=run_id is not None)


def _close_other_parents(parent: Tracker, token: str) -> None:
    """End the parent run a comparison killed before it recorded its id left RUNNING (found by its token)."""
    try:
        runs = parent.client.search_runs(
            [parent.experiment_id],
            filter_string=f"tags.`hpctl.compare_token` = '{token}' and attributes.status = 'RUNNING'")
        for r in runs:
            if r.info.run_id != parent.run_id:
                parent.client.set_tag(r.info.run_id, "error", f"killed before it started; resumed as run "
                                                              f"{parent.run_id}")
                parent.client.set_terminated(r.info.run_id, status="KILLED")
    except Exception:  # noqa: BLE001 - a bookkeeping repair never stops the comparison
        pass


def _run_comparison(plugin, plugin_name: str, controllers: list[str], seeds: int, base: RunOptions,
                    plugin_config: dict[str, Any], engine, out_dir: Path, lock, parent: Tracker, token: str, *,
                    on_run: Callable[[str, int], Any] | None, t_start: float, resumed: bool) -> dict[str, Any]:
    """The trials and the summary of a comparison whose folder is locked and whose MLflow
    run is open. Whatever happens, the parent run and every trial run under it end
    (KILLED on SIGTERM or Ctrl-C, FAILED on an error) and the folder is released."""
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in controllers}
    failures: list[dict[str, Any]] = []
    trajs: dict[str, list] = {c: [] for c in controllers}
    status, error = "FINISHED", None
    result: dict[str, Any] | None = None
    try:
        if not resumed:
            parent.log_params({"controllers": ",".join(controllers), "seeds": seeds, "budget": base.budget,
                               "plugin_config": plugin_config})
        else:
            parent.set_tags({"hpctl.resumed": "true"})
        trials: list[tuple[str, int, RunOptions]] = []
        for ctrl in controllers:
            for s in range(seeds):
                seed = base.seed + s
                opts = dataclasses.replace(local_options(base), controller=ctrl, seed=seed,
                                           out=str(out_dir / f"{ctrl}-s{seed}"),
                                           controller_config=settings_for(ctrl, base))
                if engine.parallel:  # a worker's cwd and default store may not be ours
                    opts = dataclasses.replace(opts, out=str((out_dir / f"{ctrl}-s{seed}").resolve()),
                                               tracking_uri=parent.uri)
                trials.append((ctrl, seed, opts))

        def finished(i: int, outcome: Outcome) -> None:
            raise_user_error(outcome)  # the same bad input would fail every trial
            if engine.parallel and on_run is not None and outcome.ok:
                bar = on_run(*trials[i][:2])  # shown when done: a worker's progress cannot reach us
                if bar is not None:
                    res = outcome.value["result"]
                    bar("start", {"budget": res["budget"], "done": res["probes"], "out_dir": res["out_dir"]})

        outcomes = engine.map(
            run_trial, [(RunSpec(plugin=plugin_name, options=o, plugin_config=plugin_config).to_json(), parent.run_id,
                         token) for _, _, o in trials],
            on_result=finished,
            in_process=lambda i: {"progress": on_run(*trials[i][:2]) if on_run else None, "plugin": plugin,
                                  "experiment_id": parent.experiment_id})
        if resumed:  # trial runs the killed process opened before their first checkpoint: nothing resumes them
            parent.close_children("KILLED")
        for (ctrl, seed, opts), outcome in zip(trials, outcomes):
            if not outcome.ok:  # one crashed trial does not cost the others
                failures.append({"controller": ctrl, "seed": seed, "error": outcome.error, "out_dir": opts.out})
                continue
            res, hist = outcome.value["result"], outcome.value["history"]
            runs[ctrl].append(res)
            trajs[ctrl].append(trajectory(hist, list(res["learned"].values()), res["probes"]))
        if not any(runs.values()):
            raise RuntimeError(f"every run failed; the first: {failures[0]['error']} (see {failures[0]['out_dir']})")
        runs = {c: rs for c, rs in runs.items() if rs}
        metric = plugin.primary_metric
        summary = {}
        for ctrl, rs in runs.items():
            names = list(rs[0]["learned"])
            summary[ctrl] = {
                "learned": {n: median_iqr([r["learned"][n] for r in rs]) for n in names},
                metric: median_iqr([r["metrics"].get(metric) for r in rs]),
                "distance": median_iqr([r["metrics"].get("distance") for r in rs])
                if all("distance" in r["metrics"] for r in rs) else None,
                "probes": median_iqr([r["probes"] for r in rs]),
                "updates": median_iqr([r.get("updates", 0) for r in rs]),
                "wall_s": median_iqr([r["wall_s"] for r in rs]),
            }
        first = next(iter(runs.values()))[0]
        result = {"plugin": plugin_name, "controllers": controllers, "seeds": seeds, "budget": first["budget"],
                  "primary_metric": metric, "optimum": first.get("optimum"), "summary": summary,
                  "runs": {c: [{k: r.get(k) for k in ("seed", "learned", "best_probe", "updates", "metrics", "probes",
                                                     "wall_s", "mlflow_run_id")}
                               | ({"mlflow_unlogged": r["mlflow_unlogged"]} if r.get("mlflow_unlogged") else {})
                               for r in rs] for c, rs in runs.items()},
                  "failures": failures, "mlflow_run_id": parent.run_id, "out_dir": str(out_dir),
                  "engine": engine.name, "wall_s": time.perf_counter() - t_start, "resumed": resumed}
        atomic_write_json(out_dir / "compare.json", result)
        parent.artifact(out_dir / "compare.json")
        for ctrl, s in summary.items():
            parent.metrics({f"{ctrl}/{metric}": s[metric]["median"], f"{ctrl}/wall_s": s["wall_s"]["median"]})
        try:
            from hpctl.plots import plot_compare

            opt = list(first["optimum"].values()) if first.get("optimum") else None
            png = plot_compare(trajs, list(first["learned"]), out_dir / "compare.png", optimum=opt,
                               title=f"{plugin_name}: knob trajectories, {seeds} seed(s) per controller")
            parent.artifact(png)
        except Exception as exc:  # noqa: BLE001 - a plot never costs the results
            parent.set_tags({"plot_error": str(exc)[:500]})
        return result
    except BaseException as exc:
        status, error = ("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"), str(exc)
        if isinstance(exc, KeyboardInterrupt):
            error = (f"{'terminated (SIGTERM)' if isinstance(exc, Terminated) else 'interrupted (Ctrl-C)'}; "
                     f"resume with hpctl compare --resume {out_dir}")
        raise
    finally:
        try:
            if status != "FINISHED":  # a trial interrupted before its own clean-up could end its run
                parent.close_children(status)
        except BaseException:  # noqa: BLE001 - a second signal here still ends the parent below
            pass
        finally:
            try:
                if status == "FINISHED":
                    parent.end(status, error)
                else:
                    end_quietly(parent, status, error)
                # what the comparison's own run lacks (a store that stalled): in the folder and compare.json
                note_unlogged(parent, out_dir, result if status == "FINISHED" else None, "compare.json")
            finally:
                note_files(out_dir)
                lock.release()


def summary_table(result: dict[str, Any]):
    from rich.table import Table

    metric = result["primary_metric"]

    def fmt(s: dict[str, float] | None, digits: int = 3) -> str:
        if not s or not np.isfinite(s["median"]):
            return "-"
        return f"{s['median']:.{digits}f} [{s['q25']:.{digits}f}, {s['q75']:.{digits}f}]"

    t = Table(title=f"{result['plugin']}: {result['seeds']} seed(s), budget {result['budget']} probes "
                    f"(median [IQR] over seeds)")
    t.add_column("controller")
    t.add_column("learned")
    t.add_column(metric)
    t.add_column("|learned - optimum|")
    t.add_column("probes")
    t.add_column("updates")
    t.add_column("wall s")
    for ctrl, s in result["summary"].items():
        learned = "; ".join(fmt(v) for v in s["learned"].values())
        t.add_row(ctrl, learned, fmt(s[metric], 4), fmt(s["distance"]), fmt(s["probes"], 0),
                  fmt(s.get("updates"), 0), fmt(s["wall_s"], 2))
    return t
