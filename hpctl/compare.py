"""``hpctl compare``: several controllers, same plugin, same budget and seeds.

Each (controller, seed) is an ordinary :func:`hpctl.runner.run` nested under one parent
MLflow run. The summary gives, per controller, the median and inter-quartile range over
seeds of the learned value, the primary test metric, the distance to the optimum (where
the plugin knows it), the probes spent and the wall time.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpctl.controllers.base import get_controller
from hpctl.config import RunOptions
from hpctl.errors import ConfigError, HpctlError
from hpctl.registry import load_plugin
from hpctl.rundir import RunSpec, atomic_write_json, prepare_out_dir
from hpctl.runner import run
from hpctl.tracking import Tracker


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


def compare(plugin_name: str, controllers: list[str], seeds: int, base: RunOptions, plugin_config: dict[str, Any],
            *, out: str | None = None, on_run: Callable[[str, int], Any] | None = None) -> dict[str, Any]:
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if not controllers:
        raise ConfigError("--controllers is empty")
    for c in controllers:
        get_controller(c)  # fail fast on a typo, before any run
    plain = sorted(k for k in base.controller_config if "." not in k)
    if plain and base.controller not in controllers:
        raise ConfigError(f"setting {plain[0]!r} names no controller: write it as CONTROLLER.{plain[0]} "
                          f"(e.g. {controllers[0]}.{plain[0]}), or pass --controller to say which one it is for")
    plugin = load_plugin(plugin_name)
    out_dir = prepare_out_dir(out or f"runs/compare-{plugin_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                              plugin_name, "compare", base.seed)
    parent = Tracker(base.tracking_uri, f"hpctl-{plugin_name}", run_name=f"compare {plugin_name}",
                     tags={"hpctl.plugin": plugin_name, "hpctl.command": "compare"})
    parent.log_params({"controllers": ",".join(controllers), "seeds": seeds, "budget": base.budget,
                       "plugin_config": plugin_config})
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in controllers}
    failures: list[dict[str, Any]] = []
    trajs: dict[str, list] = {c: [] for c in controllers}
    status, error = "FINISHED", None
    try:
        for ctrl in controllers:
            for s in range(seeds):
                seed = base.seed + s
                opts = dataclasses.replace(base, controller=ctrl, seed=seed, out=str(out_dir / f"{ctrl}-s{seed}"),
                                           controller_config=settings_for(ctrl, base))
                progress = on_run(ctrl, seed) if on_run else None
                try:
                    res = run(RunSpec(plugin=plugin_name, options=opts, plugin_config=plugin_config),
                              parent_run_id=parent.run_id, progress=progress)
                except HpctlError:
                    raise  # the same bad input would fail every run
                except Exception as exc:  # noqa: BLE001 - one crashed run does not cost the others
                    failures.append({"controller": ctrl, "seed": seed, "error": f"{type(exc).__name__}: {exc}",
                                     "out_dir": opts.out})
                    continue
                runs[ctrl].append(res)
                hist = json.loads((Path(res["out_dir"]) / "history.json").read_text())
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
                "wall_s": median_iqr([r["wall_s"] for r in rs]),
            }
        first = next(iter(runs.values()))[0]
        result = {"plugin": plugin_name, "controllers": controllers, "seeds": seeds, "budget": first["budget"],
                  "primary_metric": metric, "optimum": first.get("optimum"), "summary": summary,
                  "runs": {c: [{k: r[k] for k in ("seed", "learned", "metrics", "probes", "wall_s", "mlflow_run_id")}
                               for r in rs] for c, rs in runs.items()},
                  "failures": failures, "mlflow_run_id": parent.run_id, "out_dir": str(out_dir)}
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
        raise
    finally:
        parent.end(status, error)


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
    t.add_column("wall s")
    for ctrl, s in result["summary"].items():
        learned = "; ".join(fmt(v) for v in s["learned"].values())
        t.add_row(ctrl, learned, fmt(s[metric], 4), fmt(s["distance"]), fmt(s["probes"], 0), fmt(s["wall_s"], 2))
    return t
