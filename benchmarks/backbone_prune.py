"""backbone_prune benchmarks: a probe's prune+restore cost, and the learned sparsity against a grid.

``speed``: on the default preset's backbone (Gemma 3 270M) and micro-dev split, time ``--probes``
probes at random sparsities and split each into forming the masked weights plus putting the
training weights back (``BackbonePruner.apply_seconds``) and the rest (the forward passes). The
issue's target: prune+restore at most 5 % of a probe. Process CPU seconds are printed too (wall
time grows with everyone else's load on a shared machine)::

    python -m benchmarks.backbone_prune speed --probes 6
    python -m benchmarks.backbone_prune speed --preset smoke --probes 4     # the tiny backbone

``compare`` (one seed per call, so a long benchmark runs in parts; issue #35 item 5): every
controller (``--controllers auto``: GRPO, random search and Optuna's ``tpe``, ``gp`` and ``cmaes``
where they can run here) learns the sparsity in one ``hpctl run backbone_prune`` at the same
``--budget``, side by side with a grid of ``--grid`` sparsities spread over the knob's range, each
a full recovery fine-tune (``BackbonePruneTask.full_run``, the recipe of the run's final phase)
scored by the reward on the dev split (``--set dev=N``: make it large). Every choice is scored
alike: a controller's recovery *is* that fine-tune at its learned sparsity on the same dev split
(same seed, data order and steps), so its run's dev reward and loss are used (``--rescore``
repeats the fine-tune in the grid's task; the test checks that both agree). Per part: wall seconds
per arm and the time ratio grid / controller, the grid's choice and each learned sparsity with its
dev reward, dev loss and dense dev loss, and how the landscape moves as the adapter recovers: per
round of each controller, the Spearman correlation of the round's probe rewards (and loss ratios)
with the grid's final recovery curve interpolated at the probes' sparsities, the round's best
probe and the peak of a quadratic fitted to its probes (:func:`landscape_vs_recovery`), drawn in
``part-seedS.png`` beside ``part-seedS.json`` under ``--out``. Run folders go under ``--runs``; a part
file already holding an arm with the same settings is reused (an interrupted part resumes at the
next arm, or the next grid point: the file is written after each).

Time: the grid's is its dense reference (paid once) plus its points, each one fine-tune and one
dev pass; it keeps its best point's adapter, so it needs no re-run. A controller's is its whole
run as run (``time_ratio_grid_over_run``) and, the ratio to quote, the same less the generation
on the test split of its dense baseline and final adapter (``time_ratio_to_adapter``), which the
grid does not do.

``merge``: the parts of ``--parts`` (one per seed) into one JSON (:func:`merge`: per arm the median and
worst-seed sparsity, dev reward and dev loss, how often its choice is within the tolerance, the
time ratios, the landscape correlations) and its report (:func:`render`, from the JSON alone; the
docs generator ``python -m benchmarks.pages`` re-renders it), the plots copied beside them.

Smoke (the tiny random backbone; about 30 s of wall time for four controllers and a 3-point grid
on the 2-core machine while another benchmark ran)::

    python -m benchmarks.backbone_prune compare --seed 0 --preset smoke --grid 3 --budget 8 --out /tmp/bp
    python -m benchmarks.backbone_prune merge --parts /tmp/bp --out /tmp/bp/backbone_prune.json

Gemma 3 270M, issue #35's benchmark: three parts (one a seed; every arm at the plugin's budget of
20 probes; a 300-question dev split, as grasp_vs_grid's regret scale), then the merge into the
committed results and the docs. Measured on this project's idle 2-core CPU machine with the
backbone cached: about 29 minutes a part (five controller runs of 3.1-3.7 minutes, the 8-point
grid 9.5 minutes: a grid point is 12 recovery steps and one 300-question dev pass, about 65 s)::

    python -m benchmarks.backbone_prune compare --seed 0 --budget 20 --set dev=300
    python -m benchmarks.backbone_prune compare --seed 1 --budget 20 --set dev=300
    python -m benchmarks.backbone_prune compare --seed 2 --budget 20 --set dev=300
    python -m benchmarks.backbone_prune merge --parts benchmarks/results/backbone_prune_parts
    python -m benchmarks.pages

(parts under ``benchmarks/results/backbone_prune_parts/`` by default, their run folders under its
``runs/``, which git ignores; the merge writes ``benchmarks/results/backbone_prune.json``, ``.md`` and
``backbone_prune_seedS.png``, and the docs page gathers them from then on.)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Optuna's samplers, run where installed (``--controllers auto``)
OPTUNA = ("tpe", "gp", "cmaes")
#: the results of the benchmark as ``merge`` writes them (the docs page gathers them when they exist)
RESULT_NAME = "backbone_prune"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _sets(items: list[str]) -> dict[str, Any]:
    from hpctl.cli import parse_sets

    return parse_sets(tuple(items))


def speed(preset: str, probes: int, seed: int, sets: dict[str, Any]) -> dict[str, Any]:
    """Time ``probes`` probes at random sparsities on a ready task; prune+restore vs the rest."""
    from hpctl.plugins.backbone_prune import BackbonePruneConfig, BackbonePrunePlugin

    with tempfile.TemporaryDirectory(prefix="bp-speed-") as tmp:
        task = BackbonePrunePlugin().make_task(BackbonePruneConfig(preset=preset, **sets), seed=seed, out_dir=Path(tmp))
        t0 = time.perf_counter()
        task.reset(seed)
        setup_s = time.perf_counter() - t0
        task.reference("micro_dev", 0)  # the dense reference: not part of a probe's own cost
        task.probe(task.knob.default_value)  # warm: the reused buffers exist from here on
        rng = np.random.default_rng(seed)
        apply0, n0 = task.pruner.apply_seconds, task.pruner.applies
        wall0, cpu0 = time.perf_counter(), _cpu()
        for _ in range(probes):
            task.probe(task.knob.from_unit(rng.uniform(size=task.knob.dim)))
        wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
        prune = task.pruner.apply_seconds - apply0
        assert task.pruner.applies - n0 == probes
        out = {"backbone": task.backbone_name, "dtype": task.cfg.dtype, "micro_dev": len(task.splits["micro_dev"].encoded),
               "block_weights": task.pruner.n_weights, "probes": probes, "setup_s": setup_s,
               "probe_s": wall / probes, "prune_restore_s": prune / probes, "forward_s": (wall - prune) / probes,
               "prune_fraction_of_probe": prune / wall, "cpu_s_per_probe": cpu / probes,
               "scores_s": task.phase_seconds.get("scores_s"), "load_s": task.phase_seconds.get("load_s")}
        task.close()
    return out



def auto_controllers() -> list[str]:
    """GRPO, random search and the Optuna samplers that can run here (their extras installed)."""
    from hpctl.controllers.base import unavailable_controllers

    missing = unavailable_controllers()
    return ["grpo", "random", *[n for n in OPTUNA if n not in missing]]


# ------------------------------------------------------------------ landscape vs recovery ----
def rankdata(x: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties given their average rank (as ``scipy.stats.rankdata``)."""
    a = np.asarray(x, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and a[order[j + 1]] == a[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation; None with fewer than 3 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} against {len(y)} values")
    if len(x) < 3:
        return None
    rx, ry = rankdata(x), rankdata(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def fitted_peak(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The maximiser over ``[min(xs), max(xs)]`` of a least-squares quadratic through the points
    (a line when fewer than 3 distinct x); None with fewer than 2 distinct x."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    distinct = len(np.unique(x))
    if distinct < 2:
        return None
    lo, hi = float(x.min()), float(x.max())
    coef = np.polyfit(x, y, 2 if distinct >= 3 else 1)
    candidates = [lo, hi]
    if len(coef) == 3 and coef[0] < 0:
        candidates.append(float(np.clip(-coef[1] / (2 * coef[0]), lo, hi)))
    return float(max(candidates, key=lambda v: np.polyval(coef, v)))


def crossing(xs: Sequence[float], ratios: Sequence[float], tolerance: float) -> float | None:
    """Where the loss ratio first exceeds ``1 + tolerance`` going up in sparsity (linear between the two
    points around it): the tolerance objective's optimum. None when no point exceeds it; the lowest
    sparsity when the first does."""
    pts = sorted(zip(xs, ratios))
    limit = 1.0 + tolerance
    for i, (x, r) in enumerate(pts):
        if r > limit:
            if i == 0:
                return float(x)
            x0, r0 = pts[i - 1]
            return float(x0 + (x - x0) * (limit - r0) / (r - r0)) if r > r0 else float(x0)
    return None


def grid_curve(grid: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
    """The grid's final recovery curve: achieved sparsity, dev reward and dev loss ratio, by sparsity."""
    pts = sorted(grid, key=lambda g: g["sparsity"])
    return {"sparsity": [g["sparsity"] for g in pts], "reward": [g["dev_reward"] for g in pts],
            "loss_ratio": [g["dev_loss"] / g["dense_dev_loss"] for g in pts]}


def rounds_of(probes: list[dict[str, Any]], history: list[dict[str, Any]] | None = None) -> list[list[dict[str, Any]]]:
    """The probes (``backbone_prune.json``'s ``landscape``) grouped by controller round: from the run's
    ``history.jsonl`` probe events when they match the probes one to one, else by training step."""
    events = [e for e in (history or []) if e.get("event") == "probe"]
    keys: list[Any]
    if events and len(events) == len(probes):
        keys = [e.get("round", e.get("step")) for e in events]
    else:
        keys = [p["step"] for p in probes]
    out: list[list[dict[str, Any]]] = []
    last: Any = object()
    for key, probe in zip(keys, probes):
        if not out or key != last:
            out.append([])
            last = key
        out[-1].append(probe)
    return out


def landscape_vs_recovery(rounds: list[list[dict[str, Any]]], grid: list[dict[str, Any]],
                          tolerance: float | None = None) -> list[dict[str, Any]]:
    """Per round: how its probes (at that round's training state) rank against the grid's final
    recovery curve (dev reward, and the loss ratio to the dense baseline) linearly interpolated at
    the probes' achieved sparsities, and where the round's best probe and fitted peak lie next to
    the grid's best point; with ``tolerance``, also where the round's probes and the grid's curve cross
    the tolerance (:func:`crossing`)."""
    curve = grid_curve(grid)
    grid_best = curve["sparsity"][int(np.argmax(curve["reward"]))] if curve["sparsity"] else None
    grid_cross = None if tolerance is None else crossing(curve["sparsity"], curve["loss_ratio"], tolerance)
    out = []
    for i, probes in enumerate(rounds):
        s = [p["sparsity"] for p in probes]
        r = [p["reward"] for p in probes]
        ratio = [p["loss"] / p["ref_loss"] for p in probes]
        on_grid_r = np.interp(s, curve["sparsity"], curve["reward"]).tolist() if curve["sparsity"] else []
        on_grid_l = np.interp(s, curve["sparsity"], curve["loss_ratio"]).tolist() if curve["sparsity"] else []
        best = int(np.argmax(r))
        peak = fitted_peak(s, r)
        out.append({"round": i, "step": probes[0]["step"], "probes": len(probes),
                    "spearman_reward": spearman(r, on_grid_r) if on_grid_r else None,
                    "spearman_loss_ratio": spearman(ratio, on_grid_l) if on_grid_l else None,
                    "best_probe": s[best], "best_reward": r[best], "fitted_peak": peak,
                    "grid_best": grid_best,
                    "best_minus_grid": None if grid_best is None else s[best] - grid_best,
                    "peak_minus_grid": None if grid_best is None or peak is None else peak - grid_best,
                    "crossing": None if tolerance is None else crossing(s, ratio, tolerance),
                    "grid_crossing": grid_cross})
    return out


def plot_part(part: dict[str, Any], path: Path) -> Path:
    """The grid's recovery curve (dev reward against sparsity) with each controller's rounds of probes
    over it, coloured by round (one panel per controller)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [n for n, a in part["controllers"].items() if a.get("probes_record")]
    curve = grid_curve(part["grid"])
    fig, axes = plt.subplots(1, max(1, len(arms)), figsize=(4.2 * max(1, len(arms)), 3.6), squeeze=False,
                             sharey=True)
    for ax, name in zip(axes[0], arms or [None]):
        ax.plot(curve["sparsity"], curve["reward"], "k-o", lw=1.5, ms=4, label="grid (final recovery, dev)")
        if name is not None:
            rounds = part["controllers"][name]["probes_record"]
            cmap = plt.get_cmap("viridis")
            for i, probes in enumerate(rounds):
                ax.scatter([p["sparsity"] for p in probes], [p["reward"] for p in probes], s=16,
                           color=cmap(i / max(1, len(rounds) - 1)), alpha=0.85,
                           label=f"round {i} (step {probes[0]['step']})" if i in (0, len(rounds) - 1) else None)
            learned = part["controllers"][name].get("dev", {}).get("sparsity")
            if learned is not None:
                ax.axvline(learned, color="tab:red", ls="--", lw=1, label="learned")
            ax.set_title(f"{name}, seed {part['seed']}")
        ax.set_xlabel("sparsity (achieved)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("reward (probes: micro-dev; grid: dev)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ one part (one seed) ----
def _scored(metrics: dict[str, Any], tolerance: float) -> dict[str, Any]:
    ratio = metrics["dev_loss"] / metrics["dense_dev_loss"]
    return {"sparsity": metrics["sparsity"], "dev_reward": metrics["dev_reward"], "dev_loss": metrics["dev_loss"],
            "dense_dev_loss": metrics["dense_dev_loss"], "loss_ratio": ratio,
            "within_tolerance": bool(ratio - 1.0 <= tolerance)}


def _write(part: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(part, indent=2, default=float) + "\n")
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(preset: str, seed: int, controllers: list[str], grid: int, budget: int | None, out_dir: Path,
            sets: dict[str, Any], runs_dir: Path | None = None, rescore: bool = False) -> dict[str, Any]:
    """One seed of the benchmark (see the module docstring); writes ``part-seed{seed}.json`` and ``.png``
    under ``out_dir`` after every arm, so a killed part keeps what finished."""
    from hpctl.config import RunOptions
    from hpctl.errors import HpctlError
    from hpctl.plugins.backbone_prune import BackbonePruneConfig, BackbonePrunePlugin, resolve_config
    from hpctl.plugins.backbone_prune.outputs import RECORD_FILE
    from hpctl.rundir import HISTORY_LOG, RunSpec
    from hpctl.runner import run

    if grid < 2:
        raise SystemExit("--grid must be at least 2")
    plugin = BackbonePrunePlugin()
    config = {"preset": preset, **sets}
    try:
        cfg = resolve_config(BackbonePruneConfig(**config))
    except TypeError as exc:  # an option the plugin does not have
        raise HpctlError(f"--set: {exc}") from None
    runs_dir = Path(runs_dir) if runs_dir is not None else out_dir / "runs"
    path = out_dir / f"part-seed{seed}.json"
    settings = {"seed": seed, "preset": preset, "set": sets, "grid_points": grid, "budget": budget}
    part: dict[str, Any] = {**settings, "tolerance": float(cfg.tolerance), "objective": cfg.objective,
                            "dev_size": int(cfg.dev), "micro_dev_size": int(cfg.micro_dev), "steps": int(cfg.steps),
                            "controller_steps": int(cfg.controller_steps), "backbone": cfg.backbone,
                            "controllers": {}, "grid": [], "command": " ".join(sys.argv)}
    if path.is_file():  # resume: keep the finished arms of a part with the same settings
        old = json.loads(path.read_text())
        if all(old.get(k) == v for k, v in settings.items()):
            part["controllers"] = {k: v for k, v in old.get("controllers", {}).items() if "error" not in v}
            part["grid"] = old.get("grid", [])  # its finished points (an interrupted grid resumes at the next)
            for k in ("grid_wall_s", "grid_reference_s", "grid_phases", "grid_choice"):
                if k in old:
                    part[k] = old[k]

    for name in controllers:
        if name in part["controllers"]:
            continue
        run_dir = runs_dir / f"seed{seed}-{name}"
        t0 = time.perf_counter()
        try:
            result = run(RunSpec("backbone_prune", RunOptions(controller=name, seed=seed, budget=budget,
                                                              out=str(run_dir)), plugin_config=dict(config)),
                         overwrite=True)
        except HpctlError as exc:  # e.g. a budget CMA-ES cannot learn from: recorded, the other arms go on
            part["controllers"][name] = {"error": str(exc).splitlines()[0]}
            _write(part, path)
            continue
        record = json.loads((run_dir / RECORD_FILE).read_text())
        m = result["metrics"]
        part["controllers"][name] = {
            "learned": result["learned"], "budget": result["budget"], "probes": result["probes"],
            "wall_s": time.perf_counter() - t0, "controller_s": result["phases"].get("controller_s"),
            "final_s": result["phases"].get("final_s"), "phases": result["phases"],
            "dev": {**_scored(m, float(cfg.tolerance)), "scored_by": "run"},
            "test": {k: m.get(k) for k in ("test_loss", "dense_test_loss", "reward", "f1", "dense_f1")},
            "probes_record": rounds_of(record["landscape"], _read_jsonl(run_dir / HISTORY_LOG)),
            "run_dir": str(run_dir)}
        _write(part, path)

    need_rescore = rescore and any("error" not in a and "rescored" not in a for a in part["controllers"].values())
    units = np.linspace(0.0, 1.0, grid)
    if len(part["grid"]) < grid or need_rescore:
        with tempfile.TemporaryDirectory(prefix="bp-grid-") as tmp:
            task = plugin.make_task(BackbonePruneConfig(**config), seed=seed, out_dir=Path(tmp))
            task.reset(seed)
            dev = task._dev_split()

            def score(v: np.ndarray) -> dict[str, Any]:
                m = task.full_run_scores(v)  # the point's recovery and its one dev pass
                return {"value": task.knob.to_dict(v), "dev_reward": m["reward"], "dev_loss": m["loss"],
                        "dense_dev_loss": m["ref_loss"], "sparsity": m["sparsity"]}

            if len(part["grid"]) < grid:
                # the dense reference every point is held to, paid once (a resumed grid's repeat is not timed)
                t0 = time.perf_counter()
                task.reference(dev, task.fine_tune_steps)
                part.setdefault("grid_reference_s", time.perf_counter() - t0)
                phases = dict(part.get("grid_phases", {}))
                before = dict(task.phase_seconds)
                for u in units[len(part["grid"]):]:
                    t1 = time.perf_counter()
                    point = score(task.knob.from_unit(u))
                    point["within_tolerance"] = bool(point["dev_loss"] / point["dense_dev_loss"] - 1 <= cfg.tolerance)
                    part["grid"].append({**point, "wall_s": time.perf_counter() - t1})
                    part["grid_phases"] = {k: phases.get(k, 0.0) + task.phase_seconds.get(k, 0.0) - before.get(k, 0.0)
                                           for k in {**phases, **task.phase_seconds}}
                    # the grid's time: the reference plus its points (so a resumed grid is timed alike)
                    part["grid_wall_s"] = part["grid_reference_s"] + sum(g["wall_s"] for g in part["grid"])
                    _write(part, path)  # a killed grid keeps its finished points
            if need_rescore:
                for name, arm in part["controllers"].items():
                    if "error" in arm or "rescored" in arm:
                        continue
                    s = score(task.knob.as_array(list(arm["learned"].values())))
                    arm["rescored"] = {**_scored({**s, "dev_reward": s["dev_reward"]}, float(cfg.tolerance)),
                                       "scored_by": "grid task"}
            task.close()
    best = max(part["grid"], key=lambda g: g["dev_reward"])
    part["grid_choice"] = {**_scored(best, float(cfg.tolerance)), "value": best["value"]}
    for name, arm in part["controllers"].items():
        if "error" in arm:
            continue
        arm["time_ratio_grid_over_run"] = part["grid_wall_s"] / arm["wall_s"]
        # time to the adapter: the run less its test scoring (dense and final), which the grid does not pay
        arm["adapter_s"] = arm["wall_s"] - float((arm.get("phases") or {}).get("test_scoring_s", 0.0))
        arm["time_ratio_to_adapter"] = part["grid_wall_s"] / arm["adapter_s"]
        arm["landscape"] = landscape_vs_recovery(arm["probes_record"], part["grid"], part["tolerance"])
    _write(part, path)
    plot_part(part, path.with_suffix(".png"))
    return part


# ------------------------------------------------------------------ merge and report ----
ARM_FIELDS = ("sparsity", "dev_reward", "dev_loss", "loss_ratio")


def _median(xs: list[float]) -> float | None:
    return float(statistics.median(xs)) if xs else None


def merge(parts: list[dict[str, Any]], name: str = RESULT_NAME) -> dict[str, Any]:
    """Seeds into one document: per arm (``grid`` and each controller) the median over seeds and the
    worst seed (the lowest dev reward) of sparsity, dev reward, dev loss and loss ratio; how many
    seeds its choice is within the tolerance; the time ratios grid / controller; the reward given
    up against the grid's choice; and per controller the landscape correlation of its first and
    last round. The parts are kept (less their probe records) so the report renders from it alone."""
    if not parts:
        raise SystemExit("merge: no parts")
    parts = sorted(parts, key=lambda p: p["seed"])
    seeds = [p["seed"] for p in parts]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"merge: seeds repeat across parts: {seeds}")
    for p in parts:
        if "grid_choice" not in p:
            raise SystemExit(f"merge: the part of seed {p['seed']} has {len(p.get('grid', []))} of its "
                             f"{p['grid_points']} grid points (interrupted): rerun its compare command, which "
                             "reuses the finished arms and points")
    arm_names = ["grid"] + list(dict.fromkeys(k for p in parts for k in p["controllers"]))
    arms: dict[str, Any] = {}
    for arm_name in arm_names:
        rows, ratios, adapter_ratios, gaps, first, last, errors = [], [], [], [], [], [], []
        crossings, grid_crossings = [], []
        for p in parts:
            if arm_name == "grid":
                rows.append((p["seed"], p["grid_choice"]))
                continue
            arm = p["controllers"].get(arm_name)
            if arm is None:
                continue
            if "error" in arm:
                errors.append({"seed": p["seed"], "error": arm["error"]})
                continue
            rows.append((p["seed"], arm["dev"]))
            ratios.append(arm["time_ratio_grid_over_run"])
            if "time_ratio_to_adapter" in arm:
                adapter_ratios.append(arm["time_ratio_to_adapter"])
            gaps.append(p["grid_choice"]["dev_reward"] - arm["dev"]["dev_reward"])
            ls = arm.get("landscape") or []
            if ls:
                first.append(ls[0]["spearman_reward"])
                last.append(ls[-1]["spearman_reward"])
                if ls[-1].get("crossing") is not None and ls[-1].get("grid_crossing") is not None:
                    crossings.append(ls[-1]["crossing"])
                    grid_crossings.append(ls[-1]["grid_crossing"])
        entry: dict[str, Any] = {"seeds": [s for s, _ in rows], "errors": errors}
        if rows:
            worst_seed, worst = min(rows, key=lambda r: r[1]["dev_reward"])
            entry["median"] = {k: _median([r[k] for _, r in rows]) for k in ARM_FIELDS}
            entry["worst"] = {"seed": worst_seed, **{k: worst[k] for k in ARM_FIELDS}}
            entry["within_tolerance"] = sum(bool(r["within_tolerance"]) for _, r in rows)
        if arm_name != "grid":
            entry["time_ratio"] = ({"median": _median(ratios), "min": min(ratios), "max": max(ratios)}
                                   if ratios else None)
            entry["time_ratio_to_adapter"] = ({"median": _median(adapter_ratios), "min": min(adapter_ratios),
                                               "max": max(adapter_ratios)} if adapter_ratios else None)
            entry["reward_below_grid"] = {"median": _median(gaps), "worst": max(gaps)} if gaps else None
            ok_first, ok_last = [x for x in first if x is not None], [x for x in last if x is not None]
            entry["spearman_first_round"] = _median(ok_first)
            entry["spearman_last_round"] = _median(ok_last)
            # where the last round's probes and the grid's recoveries cross the tolerance (the seeds where both do)
            entry["crossing_last_round"] = _median(crossings) if crossings else None
            entry["grid_crossing"] = _median(grid_crossings) if grid_crossings else None
        arms[arm_name] = entry
    slim = []
    for p in parts:
        q = json.loads(json.dumps(p, default=float))
        for arm in q["controllers"].values():
            arm.pop("probes_record", None)
            arm.pop("phases", None)
        slim.append(q)
    first_part = parts[0]
    return {"name": name, "seeds": seeds, "preset": first_part["preset"], "set": first_part["set"],
            "backbone": first_part.get("backbone"), "tolerance": first_part["tolerance"],
            "objective": first_part.get("objective"), "dev_size": first_part.get("dev_size"),
            "grid_points": first_part["grid_points"], "budget": first_part["budget"],
            "arms": arms, "parts": slim}


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def render(doc: dict[str, Any]) -> str:
    """The merged document as markdown (what ``merge`` writes and ``python -m benchmarks.pages`` re-renders)."""
    n = len(doc["seeds"])
    sets = " ".join(f"{k}={v}" for k, v in doc["set"].items()) or "none"
    lines = [f"# backbone_prune: learned sparsity against a {doc['grid_points']}-point grid", "",
             f"Backbone `{doc['backbone']}` (preset `{doc['preset']}`, options: {sets}), seeds "
             f"{', '.join(str(s) for s in doc['seeds'])}, objective `{doc['objective']}` at tolerance "
             f"{_f(doc['tolerance'], 2)}, dev split of {doc['dev_size']} examples, controller budget "
             f"{doc['budget'] if doc['budget'] is not None else 'the plugin default'}. Every choice is scored by a full "
             "recovery fine-tune at it on the dev split; the grid's choice is its point with the best dev reward.", "",
             f"## Per arm (median over {n} seeds; worst: the seed with the lowest dev reward)", "",
             "| arm | sparsity | dev reward | dev loss / dense | worst seed: sparsity, reward, loss ratio | "
             "within tolerance | reward below the grid's (median, worst) | time ratio grid / arm as run (median, range) "
             "| to the adapter, test scoring left out (median, range) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, a in doc["arms"].items():
        if "median" not in a:
            lines.append(f"| {name} | - | - | - | - | - | - | - | - |")
            continue
        m, w = a["median"], a["worst"]
        gap = a.get("reward_below_grid")
        tr, ta = (None if a.get(k) is None else f"{_f(a[k]['median'], 2)}x ({_f(a[k]['min'], 2)}-{_f(a[k]['max'], 2)})"
                  for k in ("time_ratio", "time_ratio_to_adapter"))
        lines.append(
            f"| {name} | {_f(m['sparsity'])} | {_f(m['dev_reward'])} | {_f(m['loss_ratio'], 4)} | seed {w['seed']}: "
            f"{_f(w['sparsity'])}, {_f(w['dev_reward'])}, {_f(w['loss_ratio'], 4)} | {a['within_tolerance']} of "
            f"{len(a['seeds'])} | {'-' if gap is None else _f(gap['median']) + ', ' + _f(gap['worst'])} | "
            f"{tr or '-'} | {ta or '-'} |")
    errors = [(name, e) for name, a in doc["arms"].items() for e in a.get("errors", [])]
    if errors:
        lines += ["", "Arms that did not run: " + "; ".join(f"{name} seed {e['seed']}: {e['error']}" for name, e in errors)
                  + "."]
    lines += ["", "## Per seed", "", "| seed | arm | sparsity | dev reward | dev loss | dense dev loss | wall s |",
              "|---|---|---|---|---|---|---|"]
    for p in doc["parts"]:
        g = p["grid_choice"]
        lines.append(f"| {p['seed']} | grid ({p['grid_points']} points) | {_f(g['sparsity'])} | {_f(g['dev_reward'])} | "
                     f"{_f(g['dev_loss'], 4)} | {_f(g['dense_dev_loss'], 4)} | {_f(p['grid_wall_s'], 0)} |")
        for name, arm in p["controllers"].items():
            if "error" in arm:
                continue
            d = arm["dev"]
            lines.append(f"| {p['seed']} | {name} | {_f(d['sparsity'])} | {_f(d['dev_reward'])} | {_f(d['dev_loss'], 4)} | "
                         f"{_f(d['dense_dev_loss'], 4)} | {_f(arm['wall_s'], 0)} |")
    lines += ["", "## Landscape against recovery", "",
              "Per round of each controller: Spearman's correlation of the round's probe rewards (micro-dev, at that "
              "round's training state) with the grid's final recovery curve (dev reward) interpolated at the probes' "
              "sparsities, the same for the loss ratio to the dense reference, the round's best probe and the peak of a "
              "quadratic fitted to its probes, beside the grid's best point; and where the round's probes and the "
              "grid's curve cross the tolerance (- where none of their points exceeds it).", "",
              "| seed | arm | round | step | probes | rho reward | rho loss ratio | best probe | fitted peak | grid best | "
              "crossing | grid crossing |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in doc["parts"]:
        for name, arm in p["controllers"].items():
            for r in arm.get("landscape") or []:
                lines.append(f"| {p['seed']} | {name} | {r['round']} | {r['step']} | {r['probes']} | "
                             f"{_f(r['spearman_reward'], 2)} | {_f(r['spearman_loss_ratio'], 2)} | {_f(r['best_probe'])} | "
                             f"{_f(r['fitted_peak'])} | {_f(r['grid_best'])} | {_f(r.get('crossing'))} | "
                             f"{_f(r.get('grid_crossing'))} |")
    lines.append("")
    for s in doc["seeds"]:
        lines.append(f"![seed {s}]({doc['name']}_seed{s}.png)")
    return "\n".join(lines).rstrip() + "\n"


def merge_parts(parts_dir: Path, out: Path) -> dict[str, Any]:
    """Read ``part-seed*.json`` under ``parts_dir``; write ``out`` (JSON), its ``.md`` and the plots beside it."""
    files = sorted(Path(parts_dir).glob("part-seed*.json"))
    if not files:
        raise SystemExit(f"merge: no part-seed*.json under {parts_dir}")
    doc = merge([json.loads(f.read_text()) for f in files], name=out.stem)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    out.with_suffix(".md").write_text(render(doc))
    for f in files:
        png = f.with_suffix(".png")
        if png.is_file():
            seed = json.loads(f.read_text())["seed"]
            shutil.copyfile(png, out.parent / f"{out.stem}_seed{seed}.png")
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed", help="a probe's prune+restore against its forward")
    s.add_argument("--preset", default="default")
    s.add_argument("--probes", type=int, default=6)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a plugin option")
    c = sub.add_parser("compare", help="controllers against a grid of full recoveries (one seed)")
    c.add_argument("--preset", default="default")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--controllers", default="auto",
                   help="comma list, or auto: grpo, random and Optuna's tpe, gp, cmaes where installed")
    c.add_argument("--grid", type=int, default=8)
    c.add_argument("--budget", type=int, default=None, help="probes of every controller (default: the plugin's)")
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backbone_prune_parts"))
    c.add_argument("--runs", default=None, help="run folders (default: OUT/runs)")
    c.add_argument("--rescore", action="store_true",
                   help="also repeat each learned sparsity's recovery in the grid's task (a check: same numbers)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a plugin option")
    m = sub.add_parser("merge", help="parts (seeds) into one JSON and its report")
    m.add_argument("--parts", required=True)
    m.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"{RESULT_NAME}.json"))
    args = p.parse_args(argv)
    from hpctl.errors import HpctlError

    try:
        return _main(args)
    except HpctlError as exc:  # bad input (an unknown option, a bound out of range): one line
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    if args.cmd == "speed":
        res = speed(args.preset, args.probes, args.seed, _sets(args.set))
    elif args.cmd == "merge":
        doc = merge_parts(Path(args.parts), Path(args.out))
        print(render(doc))
        return 0
    else:
        names = auto_controllers() if args.controllers == "auto" else [x for x in args.controllers.split(",") if x]
        res = compare(args.preset, args.seed, names, args.grid, args.budget, Path(args.out), _sets(args.set),
                      runs_dir=None if args.runs is None else Path(args.runs), rescore=args.rescore)
        res = {k: v for k, v in res.items() if k not in ("controllers",)} | {
            "controllers": {n: {k: v for k, v in a.items() if k not in ("probes_record", "phases", "landscape")}
                            for n, a in res["controllers"].items()}}
    print(json.dumps(res, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
