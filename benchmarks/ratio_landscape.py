"""What the GRASP controller sees against what the grid measures: loss against prune ratio (issue 12).

Per seed, on one grasp_lora configuration (a preset plus ``--set`` options) and a large dev
set (``--dev``, a few hundred examples: the teacher-forced loss is cheap and smooth):

1. **the controller's view**: the micro-dev loss (what a loss probe scores) at each of ``k``
   ratios, at the training states where the controller probes: the start of every round of
   the controller run (``controller_steps`` cut into ``budget // (group_size + 1)`` rounds, as
   ``hpctl run`` cuts it) and its end. Between rounds the merged adapter trains at the start
   ratio (the knob's default, where every controller starts; a controller would move it).
   The large-dev loss is recorded at the first and last of those states too (``--state-dev all``:
   at every state; each costs ``points`` passes over the dev set), so a disagreement can be put
   down to the micro-dev's size or to the state.
2. **the grid's curve**: for each of the same ``k`` ratios (the grid controller's points) a
   whole fine-tune (``steps``) from the merged start, then the large-dev loss
   (``GraspTask.full_run``: what ``--controller grid`` scores every point by).

3. the micro-dev curve after each grid point's whole fine-tune (a grid scored on the
   micro-dev: does the micro-dev's size alone agree with the large dev?), and with
   ``--trajectory K,...`` the micro-dev and dev curves after ``K`` steps of it too: what a
   probe that first fine-tuned ``K`` steps at its candidate ratio would rank on a small and
   on a large probe set (the grid points are unchanged by either, :func:`grid_point`).

Reported per seed and state: the Spearman rank correlation of each probe-state curve with
the grid's curve and the ratio where each curve has its minimum; then per seed the mean
correlation over the states. Nothing is fitted or tuned here: the script records curves.

    python -m benchmarks.ratio_landscape --preset smoke --seeds 0,1,2 --points 8 --dev 64
    python -m benchmarks.ratio_landscape --preset default --seeds 0 --dev 300   # then --seeds 1, 2: one part each
    python -m benchmarks.ratio_landscape --preset default --seeds 2 --dev 300 --trajectory 4,8,12

A run keeps the other seeds already in its results file when the configuration is the same
(:func:`merged_seeds`), so a long measurement runs one seed per part.

Regret of real runs on a measured curve: ``--score-runs RUN_DIR,...`` reads finished
``hpctl run grasp_lora`` folders (same preset and seed as a measured seed, ``--dev`` the same
size, so the same splits; controller settings may differ; ``--steps`` the curve's or one of its
``--trajectory`` steps, :func:`fine_tune_curves`), and reports each run's learned
ratio and its final fine-tune's dev loss against that seed's grid curve: regret as a fraction
of the curve's range (:func:`benchmarks.grasp_vs_grid.analysis.regret`). Nothing is measured
then; the results file gains a ``runs`` table::

    hpctl run grasp_lora --task xquad --lang ar --dev 300 --seed 0 --out runs/r0
    python -m benchmarks.ratio_landscape --preset default --score-runs runs/r0

Writes ``<out>/ratio_landscape_<preset>.json`` (command, configs, every curve),
``<out>/ratio_landscape_<preset>.md`` and ``.png`` (the curves, one panel per seed); run folders (the adapters) go under ``--runs-dir``.
A variant (``--set`` options) takes ``--tag T`` and its own ``ratio_landscape_<preset>_<T>.*`` files.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- analysis (pure)
def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as Spearman's correlation needs)."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    out = np.empty(len(x), dtype=np.float64)
    out[order] = np.arange(1, len(x) + 1, dtype=np.float64)
    for v in np.unique(x):
        tied = x == v
        if tied.sum() > 1:
            out[tied] = out[tied].mean()
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long curves; NaN when either is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"two curves of the same length >= 2 needed, got {len(a)} and {len(b)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")  # a curve that was not measured
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def argmin_ratio(ratios: Sequence[float], losses: Sequence[float]) -> float:
    """The ratio where a curve is lowest (the first one of ties); NaN for a curve not measured."""
    x = np.asarray(losses, dtype=np.float64)
    if not np.isfinite(x).any():
        return float("nan")
    return float(ratios[int(np.nanargmin(x))])


def compare(ratios: Sequence[float], grid: Sequence[float], states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each probe state's curves against the grid's: rank correlation and where the minima are."""
    rows = []
    for st in states:
        rows.append({"steps_done": st["steps_done"],
                     "spearman_micro_dev": spearman(st["micro_dev_loss"], grid),
                     "spearman_dev": spearman(st["dev_loss"], grid),
                     "argmin_micro_dev": argmin_ratio(ratios, st["micro_dev_loss"]),
                     "argmin_dev": argmin_ratio(ratios, st["dev_loss"])})

    def mean(key: str) -> float:
        vals = [r[key] for r in rows if np.isfinite(r[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {"states": rows, "grid_argmin": argmin_ratio(ratios, grid),
            "grid_range": float(np.max(grid) - np.min(grid)),
            "mean_spearman_micro_dev": mean("spearman_micro_dev"), "mean_spearman_dev": mean("spearman_dev")}


# ----------------------------------------------------------------------------- measuring
def check_trajectory(at_steps: Sequence[int], fine_tune_steps: int, mask_every: int) -> None:
    """A one-line ConfigError unless the ``--trajectory`` steps rise, lie inside the fine-tune and are
    multiples of ``mask_every`` (checked before the hour of measuring, and again per grid point)."""
    bad = [k for k in at_steps if k % mask_every or not 0 < k < fine_tune_steps]
    if bad or list(at_steps) != sorted(set(at_steps)):
        from hpctl.errors import ConfigError

        raise ConfigError(f"--trajectory steps must rise, lie inside the {fine_tune_steps}-step fine-tune and "
                          f"be multiples of mask_every={mask_every}; got {', '.join(map(str, at_steps))}")


def grid_point(task: Any, value: np.ndarray, at_steps: Sequence[int] = ()) -> tuple[float, list[float], list[float]]:
    """One grid point (``GraspTask.full_run``: a whole fine-tune from the merged start, then the
    dev loss) with the micro-dev and the dev loss recorded after each of ``at_steps`` steps on the
    way; returns ``(dev loss, micro-dev losses, dev losses)``, the two lists ending with the whole
    fine-tune's (the micro-dev's: what a grid scored on the micro-dev would see).

    The steps must be multiples of the fine-tune's mask period (``mask_every``): the masks are then
    recomputed at the same steps as in one uninterrupted fine-tune, and the evaluations in between
    change nothing, so the point is the same bit for bit (tested).
    """
    check_trajectory(at_steps, task.fine_tune_steps, int(task.cfg.mask_every))
    dev = "dev" if task.splits["dev"].encoded else "micro_dev"
    task.reset()
    done, micro, large = 0, [], []
    for k in [*at_steps, task.fine_tune_steps]:
        task.train(k - done, value)
        done = k
        micro.append(task.loss_at("micro_dev", value))
        large.append(task.loss_at(dev, value))
    return large[-1], micro, large


def measure_seed(config: Any, seed: int, points: int, out_dir: Path, budget: int, group_size: int,
                 say=print, state_dev: str = "ends", trajectory: Sequence[int] = (),
                 grid_only: bool = False) -> dict[str, Any]:
    """The curves of one seed (see the module docstring); ``config`` is a resolved GraspLoraConfig.
    ``grid_only``: no probe states, only the grid's fine-tunes (and their trajectories)."""
    from hpctl.controllers.search import grid_points
    from hpctl.plugins.grasp_lora import GraspTask
    from hpctl.runner import seed_everything, steps_per_round

    seed_everything(seed)
    task = GraspTask(config, seed=seed, out_dir=out_dir)
    t0 = time.perf_counter()
    task.reset(seed)  # backbone, data, source and target adapters, merged start
    ratios = [float(task.knob.from_unit(u)[0]) for u in grid_points(points, 1, points)]
    start = task.knob.default_value.copy()
    spr = steps_per_round(task.total_steps, budget, group_size)
    rounds = max(1, budget // (group_size + 1))
    states = []
    done = 0
    for r in range(0 if grid_only else rounds + 1):
        at = min(task.total_steps, r * spr) if r < rounds else task.total_steps
        if at > done:
            task.train(at - done, start)
            done = at
        if states and states[-1]["steps_done"] == done:
            continue
        with_dev = state_dev == "all" or r in (0, rounds)
        states.append({"steps_done": done,
                       "micro_dev_loss": [task.loss_at("micro_dev", np.array([v])) for v in ratios],
                       "dev_loss": ([task.loss_at("dev", np.array([v])) for v in ratios] if with_dev
                                    else [float("nan")] * len(ratios))})
        say(f"seed {seed}: probe state after {done}/{task.total_steps} controller-run steps measured")
    grid, along = [], []
    for v in ratios:
        loss, micro, large = grid_point(task, np.array([v]), trajectory)
        grid.append(float(loss))
        along.append((micro, large))
        say(f"seed {seed}: grid point {v:.3f}: dev loss {grid[-1]:.4f}")
    wall = time.perf_counter() - t0
    sizes = task.notes.get("split_sizes", {})
    task.close()
    out = {"seed": seed, "ratios": ratios, "start_ratio": float(start[0]), "steps_per_round": spr,
           "controller_steps": task.total_steps, "fine_tune_steps": task.fine_tune_steps, "states": states,
           "grid_dev_loss": grid, "split_sizes": sizes, "split_articles": task.notes.get("split_articles", {}),
           "wall_s": wall,
           "comparison": compare(ratios, grid, states)}
    # the micro-dev curve after k steps of every grid point's own fine-tune, k = the whole fine-tune last
    out["trajectory"] = []
    for i, k in enumerate([*trajectory, task.fine_tune_steps]):
        micro, large = [m[i] for m, _ in along], [d[i] for _, d in along]
        out["trajectory"].append({"steps": k, "micro_dev_loss": micro, "dev_loss": large,
                                  "spearman": spearman(micro, grid), "argmin": argmin_ratio(ratios, micro),
                                  "spearman_dev": spearman(large, grid), "argmin_dev": argmin_ratio(ratios, large)})
    return out


def same_config(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Two resolved grasp_lora configs make the same curves: equal, except that an option added to
    grasp_lora after ``old`` was measured counts as equal when ``new`` leaves it at its default
    (seed 2 of the default preset was measured after ``probe_steps`` existed, seeds 0 and 1 before)."""
    import dataclasses

    from hpctl.plugins.grasp_lora import GraspLoraConfig

    defaults = {f.name: f.default for f in dataclasses.fields(GraspLoraConfig)}
    for key in set(old) | set(new):
        if key not in old and key in defaults and new.get(key) == defaults[key]:
            continue
        if old.get(key) != new.get(key):
            return False
    return True


def merged_seeds(path: Path, doc: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """This run's seeds plus the other seeds of an earlier results file measured with the same
    configuration (a long benchmark runs one seed per part), and the scored runs of those other
    seeds (a re-measured seed's runs are dropped: their regret was on its old curve); a different
    configuration replaces the file."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return list(doc["seeds"]), []
    same = all(old.get(k) == json.loads(json.dumps(doc.get(k), default=str))
               for k in ("preset", "points", "budget", "group_size", "state_dev")) and bool(
        old.get("grid_only")) == bool(doc.get("grid_only")) and same_config(
        old.get("config") or {}, json.loads(json.dumps(doc.get("config") or {}, default=str)))
    if not same:
        return list(doc["seeds"]), []
    mine = {s["seed"] for s in doc["seeds"]}
    kept = [{"command": old.get("command"), **s} for s in old.get("seeds", []) if s.get("seed") not in mine]
    runs = [r for r in old.get("runs", []) if r.get("seed") not in mine]
    return sorted(kept + list(doc["seeds"]), key=lambda s: s["seed"]), runs


#: settings a scored run may change: they steer the controller run, not the grid's fine-tunes
CONTROLLER_SIDE = ("controller_steps", "baseline", "probe_metric", "probe_steps", "start_ratio", "p_min", "p_max",
                   "cache_dir")


def run_command(spec: dict[str, Any]) -> str:
    """The ``hpctl run`` options that made a run (its ``spec.json``), without ``--out``."""
    opts = spec.get("options", {})
    parts = [f"hpctl run {spec.get('plugin')}"]
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in spec.get("plugin_config", {}).items()]
    if opts.get("controller"):
        parts.append(f"-c {opts['controller']}")
    parts.append(f"--seed {opts.get('seed', 0)}")
    for k in ("budget", "group_size"):
        if opts.get(k) is not None:
            parts.append(f"--{k.replace('_', '-')} {opts[k]}")
    parts += [f"--set {k}={v}" for k, v in (opts.get("controller_config") or {}).items()]
    return " ".join(parts)


def score_run(doc: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One finished grasp_lora run against the grid curve of its seed in ``doc`` (see the docstring)."""
    import dataclasses

    from benchmarks.grasp_vs_grid.analysis import regret
    from hpctl.config import build_dataclass
    from hpctl.errors import HpctlError
    from hpctl.plugins.grasp_lora import GraspLoraConfig, resolve_config

    try:
        spec = json.loads((run_dir / "spec.json").read_text())
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError) as exc:
        raise HpctlError(f"{run_dir}: not a finished run ({exc})") from None
    if spec.get("plugin") != "grasp_lora":
        raise HpctlError(f"{run_dir}: a {spec.get('plugin')!r} run, not grasp_lora")
    seed = int(result["seed"])
    mine = next((s for s in doc["seeds"] if s["seed"] == seed), None)
    if mine is None:
        raise HpctlError(f"{run_dir}: seed {seed} has no measured curve in this results file")
    cfg = dataclasses.asdict(resolve_config(build_dataclass(GraspLoraConfig, spec["plugin_config"], what="grasp_lora")))
    ref = json.loads(json.dumps(doc["config"], default=str))
    cfg = json.loads(json.dumps(cfg, default=str))
    differ = [k for k in ref if k not in (*CONTROLLER_SIDE, "steps") and cfg.get(k) != ref[k]]
    if differ:
        raise HpctlError(f"{run_dir}: its {', '.join(f'{k}={cfg.get(k)!r}' for k in differ)} differ from the "
                         f"curve's ({', '.join(f'{k}={ref[k]!r}' for k in differ)}): not the same fine-tunes")
    steps, curve = int(cfg["steps"]), fine_tune_curves(mine)
    if steps not in curve:
        raise HpctlError(f"{run_dir}: its fine-tunes are steps={steps}; seed {seed}'s curves are for steps="
                         f"{', '.join(map(str, sorted(curve)))} (measure the landscape with --trajectory {steps})")
    dev_loss = result["metrics"].get("dev_loss")
    if dev_loss is None:
        raise HpctlError(f"{run_dir}: the run reports no dev_loss (run it with --dev > 0)")
    learned = float(next(iter(result["learned"].values())))
    r = regret(list(zip(mine["ratios"], curve[steps])), float(dev_loss), learned_ratio=learned)
    return {"run": str(run_dir), "command": run_command(spec), "seed": seed, "controller": result["controller"],
            "controller_steps": cfg["controller_steps"], "fine_tune_steps": steps,
            "learned": learned,
            "updates": result.get("updates"), "wall_s": result.get("wall_s"), **r}


def fine_tune_curves(seed_doc: dict[str, Any]) -> dict[int, list[float]]:
    """The grid curve of every fine-tune length measured for a seed: ``{steps: dev losses}``.

    The whole fine-tune's is the grid's; each ``--trajectory K`` adds the dev curve after K of its
    steps, which *is* the grid of a K-step fine-tune: the learning rate is constant, the data order
    and the mask recomputations are the same prefix, and the evaluations on the way change nothing
    (tested), so a run with ``--steps K`` is scored on it exactly.
    """
    curves = {int(seed_doc["fine_tune_steps"]): list(seed_doc["grid_dev_loss"])}
    for t in seed_doc.get("trajectory") or []:
        if t.get("dev_loss") is not None and np.all(np.isfinite(t["dev_loss"])):
            curves.setdefault(int(t["steps"]), list(t["dev_loss"]))
    return curves


# ----------------------------------------------------------------------------- report
def _f(x: float, spec: str) -> str:
    """A number for the table; '-' where it was not measured."""
    return format(x, spec) if x is not None and np.isfinite(x) else "-"


def _split(doc: dict[str, Any], name: str) -> str:
    """``"48 examples (2 articles)"``: a split's size and, where recorded, how many articles it spans."""
    seed = doc["seeds"][0]
    n, arts = seed["split_sizes"].get(name, "?"), (seed.get("split_articles") or {}).get(name)
    return f"{n} examples" + (f" ({arts} articles)" if arts is not None else "")


def backfill_articles(doc: dict[str, Any]) -> None:
    """``split_articles`` for seeds measured before it was recorded: the article split depends only on
    the configuration (``data_seed``, sizes), not on the run seed, so it is recomputed from the data."""
    if all(s.get("split_articles") for s in doc["seeds"]):
        return
    from hpctl.plugins.grasp_lora.corpora import SplitSizes, load_task_data

    c = doc["config"]
    sizes = SplitSizes(source_train=0 if c.get("source_adapter") else int(c["source_train"]),
                       target_train=int(c["target_train"]), micro_dev=int(c["micro_dev"]), dev=int(c["dev"]),
                       test=int(c["test"]))
    articles = load_task_data(c["task"], c["lang"], data_dir=c.get("data_dir"), seed=int(c.get("data_seed", 0)),
                              sizes=sizes, max_context_chars=c.get("max_context_chars")).articles()
    for s in doc["seeds"]:
        if not s.get("split_articles"):
            s["split_articles"] = articles


def best_state_dev(seed_doc: dict[str, Any]) -> dict[str, float] | None:
    """The lowest large-dev loss over the probe states where it was measured, and where: ``{dev_loss,
    ratio, steps_done}``; None when no state has a dev curve."""
    best = None
    for st in seed_doc["states"]:
        losses = np.asarray(st["dev_loss"], dtype=np.float64)
        if np.isfinite(losses).any():
            i = int(np.nanargmin(losses))
            if best is None or losses[i] < best["dev_loss"]:
                best = {"dev_loss": float(losses[i]), "ratio": float(seed_doc["ratios"][i]),
                        "steps_done": int(st["steps_done"])}
    return best


def trajectory_rows(seed_doc: dict[str, Any]) -> list[str]:
    """The trajectory table's rows of one seed: per ``--trajectory`` step k, the micro-dev and dev curves'
    Spearman against the grid and their minima, and where the micro-dev minimum lies on the grid's trend
    (:func:`benchmarks.grasp_vs_grid.analysis.curve_roughness`'s ``smoothed_fraction``: the regret on the
    trend of a controller that picked the best k-step look-ahead; '-' with fewer than 5 grid points)."""
    from benchmarks.grasp_vs_grid.analysis import curve_roughness

    s = seed_doc
    curve = list(zip(s["ratios"], s["grid_dev_loss"]))
    rows = []
    for t in s["trajectory"]:
        place = curve_roughness(curve, t["argmin"]).get("smoothed_fraction") if np.isfinite(t["argmin"]) else None
        rows.append(f"| {s['seed']} | {t['steps']} | {_f(t['spearman'], '+.2f')} | {_f(t['argmin'], '.3f')} | "
                    f"{'-' if place is None else format(100 * place, '.0f') + ' %'} | "
                    f"{_f(t.get('spearman_dev'), '+.2f')} | {_f(t.get('argmin_dev'), '.3f')} | "
                    f"{s['comparison']['grid_argmin']:.3f} |")
    return rows


def markdown(doc: dict[str, Any]) -> str:
    commands = list(dict.fromkeys(s.get("command") or doc["command"] for s in doc["seeds"]))
    L = [f"# Ratio landscape: {doc['preset']} preset" + (f", variant {doc['tag']}" if doc.get("tag") else ""), "", " ; ".join(f"`{c}`" for c in commands), "",
         f"Backbone `{doc['config']['backbone']}`, task {doc['config']['task']} {doc['config']['lang']}, "
         f"{doc['points']} ratios in [{doc['config']['p_min']}, {doc['config']['p_max']}], dev set "
         f"{_split(doc, 'dev')}, micro-dev {_split(doc, 'micro_dev')}, target train {_split(doc, 'target_train')}; "
         f"controller run {doc['seeds'][0]['controller_steps']} "
         f"steps in rounds of {doc['seeds'][0]['steps_per_round']} (trained at the start ratio "
         f"{doc['seeds'][0]['start_ratio']:.3f}); grid fine-tunes {doc['seeds'][0]['fine_tune_steps']} steps"
         + (" (`--grid-only`: no probe states measured)." if doc.get("grid_only") else "."), "",
         "Dev loss after each grid point's fine-tune:", "",
         "| seed | " + " | ".join(f"{r:.3f}" for r in doc["seeds"][0]["ratios"]) + " |",
         "|---|" + "---|" * len(doc["seeds"][0]["ratios"])]
    for s in doc["seeds"]:
        L.append(f"| {s['seed']} | " + " | ".join(f"{x:.4f}" for x in s["grid_dev_loss"]) + " |")
    L.append("")
    if not doc.get("grid_only"):
        L += ["| seed | state (steps done) | Spearman micro-dev vs grid | Spearman dev vs grid | micro-dev min at | "
              "dev min at | grid min at |", "|---|---|---|---|---|---|---|"]
    for s in doc["seeds"]:
        c = s["comparison"]
        for row in c["states"]:
            L.append(f"| {s['seed']} | {row['steps_done']} | {_f(row['spearman_micro_dev'], '+.2f')} | "
                     f"{_f(row['spearman_dev'], '+.2f')} | {_f(row['argmin_micro_dev'], '.3f')} | "
                     f"{_f(row['argmin_dev'], '.3f')} | "
                     f"{c['grid_argmin']:.3f} |")
    L += ["", "| seed | mean Spearman micro-dev vs grid | mean Spearman dev vs grid | grid curve range (dev loss) | "
          "lowest dev loss at a probe state | lowest of the grid | wall s |", "|---|---|---|---|---|---|---|"]
    for s in doc["seeds"]:
        c = s["comparison"]
        best = best_state_dev(s)
        at_state = (f"{best['dev_loss']:.4f} (ratio {best['ratio']:.3f}, after {best['steps_done']} steps)"
                    if best else "-")
        L.append(f"| {s['seed']} | {_f(c['mean_spearman_micro_dev'], '+.2f')} | {_f(c['mean_spearman_dev'], '+.2f')} | "
                 f"{c['grid_range']:.4f} | {at_state} | {min(s['grid_dev_loss']):.4f} "
                 f"(ratio {c['grid_argmin']:.3f}) | {s['wall_s']:.0f} |")
    if not doc.get("grid_only"):
        L += ["", "A probe state's lowest dev loss below the grid's lowest means that pruning the controller run's "
              "adapter at that state beats every whole fine-tune: the fine-tune then overfits its training split, "
              "and the grid's curve measures how much each ratio regularises that, which no probe of an earlier "
              "state sees."]
    traj = [s for s in doc["seeds"] if s.get("trajectory")]
    if traj:
        L += ["", "Along the grid's own fine-tunes: the micro-dev curve after k of the "
              f"{traj[0]['fine_tune_steps']} steps (`--trajectory`; k = {traj[0]['fine_tune_steps']}, always "
              "measured: a grid scored on the micro-dev), and the dev loss there, each ratio trained at itself "
              "from the merged start (what a probe that first fine-tunes k steps at its candidate would see, "
              "on a small and on a large probe set). On the grid's trend: where the micro-dev minimum lies on "
              "the quadratic fitted to the whole fine-tunes' dev losses, as a fraction of that trend's range (0: "
              "at its minimum; the regret on the trend of a controller that picked the best of these k-step "
              "look-aheads; target 10 %).", "",
              "| seed | steps k | Spearman micro-dev vs grid | micro-dev min at | on the grid's trend | "
              "Spearman dev vs grid | dev min at | grid min at |", "|---|---|---|---|---|---|---|---|"]
        for s in traj:
            L += trajectory_rows(s)
    L += ["", "Curves (dev loss after each grid point's fine-tune; micro-dev loss per probe state) are in the JSON.",
          ""]
    if doc.get("runs"):
        L += ["## Real runs scored on these curves", "",
              "Each run's final fine-tune at its learned ratio, its dev loss on the same dev examples, against the "
              "grid curve of its seed for fine-tunes of the same length (a shorter one: the `--trajectory` curve at "
              "that step): regret = that loss minus the best grid point's, as a fraction of the curve's range "
              "(target: at most 10 %). On the trend: the same read off a quadratic fitted to the grid points, "
              "without the scatter of one fine-tune; scatter: the points' std about that quadratic.", "",
              "| seed | run | fine-tune steps | controller steps | learned ratio | dev loss | best grid point | "
              "regret (% of range) | on the trend | scatter (% of range) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in doc["runs"]:
            steps = r.get("fine_tune_steps", doc["config"]["steps"])
            L.append(f"| {r['seed']} | `{r['command']}` | {steps} | {r['controller_steps']} | {r['learned']:.3f} | "
                     f"{r['learned_dev_loss']:.4f} | {r['best_grid_dev_loss']:.4f} at {r['best_grid_ratio']:.3f} | "
                     f"{100 * r['fraction']:.1f} % | "
                     + (f"{100 * r['smoothed_fraction']:.0f} %" if "smoothed_fraction" in r else "-") + " | "
                     + (f"{100 * r['roughness'] / r['grid_range']:.0f} %" if r.get("grid_range") and "roughness" in r
                        else "-") + " |")
        L.append("")
    if doc["preset"] == "smoke":
        L += ["The smoke preset's backbone is a tiny random model: these numbers check the tool, they say nothing "
              "about GRASP.", ""]
    return "\n".join(L)


def plot(doc: dict[str, Any], path: Path) -> Path:
    """One panel per seed: each curve min-max scaled to [0, 1] (their levels differ, their
    shapes are what a controller follows): the micro-dev loss at every probe state (light to
    dark as training goes on), the large-dev loss at the measured states (dashed), and the
    grid's dev loss after whole fine-tunes (black); the minimum of each marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = doc["seeds"]
    fig, axes = plt.subplots(1, len(seeds), figsize=(5.2 * len(seeds), 4.2), squeeze=False, sharey=True)

    def scaled(y: Sequence[float]) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        span = np.nanmax(y) - np.nanmin(y)
        return (y - np.nanmin(y)) / span if span > 0 else np.zeros_like(y)

    for ax, sd in zip(axes[0], seeds):
        x = sd["ratios"]
        n = len(sd["states"])
        for i, st in enumerate(sd["states"]):
            shade = plt.cm.Blues(0.35 + 0.65 * i / max(1, n - 1))
            ax.plot(x, scaled(st["micro_dev_loss"]), "o-", ms=3, color=shade, lw=1.2,
                    label=f"micro-dev, after {st['steps_done']} steps" if i in (0, n - 1) else None)
            if np.isfinite(st["dev_loss"]).all():
                ax.plot(x, scaled(st["dev_loss"]), "--", color=shade, lw=1.0,
                        label=f"dev, after {st['steps_done']} steps")
        for t in (sd.get("trajectory") or [])[:-1]:  # the last is the whole fine-tune: the grid itself
            if np.isfinite(t["dev_loss"]).all():
                ax.plot(x, scaled(t["dev_loss"]), "^:", ms=4, color="tab:orange", lw=1.2,
                        label=f"grid: dev after {t['steps']} of its steps")
        g = scaled(sd["grid_dev_loss"])
        ax.plot(x, g, "s-", color="k", lw=2, label="grid: dev after a whole fine-tune")
        ax.plot([x[int(np.argmin(g))]], [0.0], "*", ms=15, color="gold", mec="k")
        ax.set_title(f"seed {sd['seed']}: Spearman micro-dev vs grid "
                     f"{_f(sd['comparison']['mean_spearman_micro_dev'], '+.2f')}" if sd["states"]
                     else f"seed {sd['seed']}: grid only, {sd['fine_tune_steps']}-step fine-tunes")
        ax.set_xlabel("global prune ratio")
    axes[0][0].set_ylabel("loss, scaled to [0, 1] per curve (lower is better)")
    axes[0][0].legend(fontsize=7, loc="best")
    for ax, sd in list(zip(axes[0], seeds))[1:]:
        if len(sd.get("trajectory") or []) > 1:  # its own curves, not in the first panel's legend
            ax.legend(fontsize=7, loc="best")
    variant = f", variant {doc['tag']}" if doc.get("tag") else ""
    fig.suptitle(f"Ratio landscape, {doc['preset']} preset{variant} ({doc['config']['task']} {doc['config']['lang']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def results_name(args: argparse.Namespace) -> str:
    """``ratio_landscape_<preset>`` or, with ``--tag T``, ``ratio_landscape_<preset>_<T>``: a variant
    (``--set`` options) keeps its own results file instead of replacing the preset's."""
    return f"ratio_landscape_{args.preset}" + (f"_{args.tag}" if args.tag else "")


def main(argv: Sequence[str] | None = None) -> int:
    from hpctl.config import build_dataclass
    from hpctl.errors import HpctlError
    from hpctl.plugins.grasp_lora import GraspLoraConfig, GraspLoraPlugin, resolve_config

    ap = argparse.ArgumentParser(prog="python -m benchmarks.ratio_landscape", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="smoke", choices=("smoke", "default", "full"))
    ap.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    ap.add_argument("--points", type=int, default=8, help="ratios per curve (the grid's k)")
    ap.add_argument("--dev", type=int, default=None, help="dev examples (default: 300, 64 for smoke)")
    ap.add_argument("--state-dev", choices=("ends", "all"), default="ends",
                    help="large-dev curves at the first and last probe state (ends) or at every one (all)")
    ap.add_argument("--grid-only", action="store_true",
                    help="measure only the grid's fine-tunes, no probe states (e.g. a fine grid of close ratios "
                         "with --set p_min=... --set p_max=...: how smooth is the curve between grid points?)")
    ap.add_argument("--trajectory", default="", metavar="K,K,...",
                    help="also record the micro-dev and dev curves after K steps of every grid point's fine-tune "
                         "(multiples of mask_every; what a probe that first fine-tunes K steps would see; each K "
                         "costs a dev pass per point, about 12 min at 300 dev examples here)")
    ap.add_argument("--budget", type=int, default=None, help="probes of the controller run (plugin default)")
    ap.add_argument("--group-size", type=int, default=None, help="probes per round (plugin default)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a grasp_lora option, e.g. --set steps=64 (repeatable)")
    ap.add_argument("--tag", default="", help="results file suffix for a variant, e.g. --tag train192 with "
                    "--set target_train=192 (letters, digits, - and _)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--runs-dir", default=None, help="run folders (default: <out>/ratio_landscape_runs)")
    ap.add_argument("--score-runs", default=None, metavar="RUN_DIR,...",
                    help="score finished grasp_lora runs on the measured curves (measures nothing)")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_-]*", args.tag):
        print(f"ratio_landscape: error: --tag may hold letters, digits, - and _ only, got {args.tag!r}", file=sys.stderr)
        return 2
    if args.score_runs:
        return score_runs_main(args)
    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
        trajectory = [int(k) for k in str(args.trajectory).split(",") if k.strip()]
        if not seeds or any(s < 0 for s in seeds) or args.points < 2:
            raise ValueError
    except ValueError:
        print("ratio_landscape: error: --seeds must be a comma list of seeds >= 0, --trajectory one of step "
              "counts and --points at least 2", file=sys.stderr)
        return 2
    plugin = GraspLoraPlugin()
    budget = int(args.budget or plugin.default_budget)
    group = int(args.group_size or plugin.default_group_size)
    dev = args.dev if args.dev is not None else (64 if args.preset == "smoke" else 300)
    values: dict[str, Any] = {"preset": args.preset, "dev": dev, "probe_metric": "loss", "baseline": "none"}
    for item in args.sets:
        key, eq, value = item.partition("=")
        if not eq:
            print(f"ratio_landscape: error: --set needs KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        values[key.strip().replace("-", "_")] = value.strip()
    try:
        cfg = resolve_config(build_dataclass(GraspLoraConfig, values, what="plugin 'grasp_lora'"))
        if cfg.probe_metric != "loss" or cfg.knob != "global":
            raise HpctlError("the landscape is the loss against one global ratio: keep probe_metric=loss, knob=global")
        check_trajectory(trajectory, int(cfg.steps), int(cfg.mask_every))
        out = Path(args.out)
        runs = Path(args.runs_dir) if args.runs_dir else out / "ratio_landscape_runs"
        results = [measure_seed(cfg, s, args.points, runs / f"seed{s}", budget, group,
                                say=lambda m: print(f"[ratio_landscape] {m}", file=sys.stderr, flush=True),
                                state_dev=args.state_dev, trajectory=trajectory, grid_only=args.grid_only)
                   for s in seeds]
    except HpctlError as exc:
        print(f"ratio_landscape: error: {exc}", file=sys.stderr)
        return 2
    import dataclasses

    doc = {"command": "python -m benchmarks.ratio_landscape " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
           "preset": args.preset, "tag": args.tag, "points": args.points, "budget": budget, "group_size": group,
           "state_dev": args.state_dev, "grid_only": args.grid_only,
           "config": dataclasses.asdict(cfg), "seeds": results}
    for r in results:
        r["command"] = doc["command"]
    out.mkdir(parents=True, exist_ok=True)
    name = results_name(args)
    doc["seeds"], doc["runs"] = merged_seeds(out / f"{name}.json", doc)
    backfill_articles(doc)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    plot(doc, out / f"{name}.png")
    (out / f"{name}.md").write_text(markdown(doc) + f"\n![curves]({name}.png)\n")
    print(markdown(doc))
    return 0


def score_runs_main(args: argparse.Namespace) -> int:
    """``--score-runs``: add the runs to the results file of ``--preset`` and rewrite its report."""
    from hpctl.errors import HpctlError

    out = Path(args.out)
    name = results_name(args)
    path = out / f"{name}.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"ratio_landscape: error: no measured curves to score on ({path}: {exc})", file=sys.stderr)
        return 2
    try:
        scored = [score_run(doc, Path(d.strip())) for d in args.score_runs.split(",") if d.strip()]
    except HpctlError as exc:
        print(f"ratio_landscape: error: {exc}", file=sys.stderr)
        return 2
    new = {r["command"] for r in scored}
    doc["runs"] = [r for r in doc.get("runs", []) if r["command"] not in new] + scored
    backfill_articles(doc)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown(doc) + f"\n![curves]({name}.png)\n")
    for r in scored:
        print(f"{r['run']}: learned {r['learned']:.3f}, dev loss {r['learned_dev_loss']:.4f}, regret "
              f"{100 * r['fraction']:.1f} % of the curve's range (best {r['best_grid_ratio']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
