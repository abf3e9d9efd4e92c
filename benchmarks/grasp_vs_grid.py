"""Benchmark: GRASP LoRA (GRPO / PPO controller) against the 8-point grid and the target-only adapter.

Run:  python benchmarks/grasp_vs_grid.py --scale smoke|cpu|gpu [--seeds 1] [--out benchmarks/results]

Two training lengths: every *fine-tune* (each grid point, every arm's final run, the
target-only adapter; ``GraspTask.fine_tune_steps``) is ``steps`` optimizer steps, GRASP's
*controller run* (the training its probes are interleaved with, ``GraspTask.total_steps``)
is ``controller_steps``, cut by the runner into rounds of ``controller_steps // (budget //
(group_size + 1))`` steps.

Per seed, on the same backbone, data split (``data_seed``), seed and step budgets:

0. **shared adapters**: the source (English) and target adapters are trained *once*
   (:class:`GraspTask` setup, saved in peft format) and every arm loads them through the
   plugin's ``source_adapter`` / ``target_adapter`` options, as a practitioner would reuse
   them. Their training time is reported once, separately, and the totals are given both
   without it and with it added to every arm (each pipeline needs the adapters once).
1. **grid**: controller ``grid`` with ``full_runs=True``, ``k`` points (default 8) evenly
   over ``[p_min, p_max]``: one whole merge-and-prune fine-tune per point, scored on dev
   (the plugin's probe measure on the dev split); the best point then goes through the
   plugin's final phase (fine-tune at that ratio, test metrics). The final phase repeats the
   winner's fine-tune bit for bit (the grid controller keeps no adapters), so the grid's
   time is also reported without that repeat.
2. **GRASP (GRPO)**: the GRPO controller interleaved with the controller run's training
   (``controller_steps``), then the final fine-tune at the learned ratio (``steps``).
3. **GRASP (PPO)**: the same with the Stable-Baselines3 PPO controller.
4. **target-only**: the target adapter alone (``merge=target_only``, ratio 0: no source,
   no pruning), fine-tuned for the same steps on the same batches and tested the same way
   (controller ``fixed`` at 0; its single probe is one micro-dev forward).

Every arm is one :func:`hpctl.runner.run` (so one MLflow run, nested under a parent run
in a sqlite store next to the run folders). Reported per arm: wall time of every phase and
in total, backbone forward/backward passes and generation steps (the plugin's
``PassCounter``), the chosen/learned ratio, test metrics; then GRASP/grid time ratios in
several accountings, pass ratios, metric differences with a paired bootstrap interval over
test examples, and a cost model built from the measured phases that says how far the time
ratio is from 4x and what would move it: longer fine-tunes (the grid's points and re-run,
GRASP's final run) with the controller run and the probes kept as measured, and, separately,
the controller run growing with them.

Throughput (same process, alternating): tokens/s of the grasp_lora training loop as the
controller run executes it (``ControlEnv.advance`` rounds of the controller run's steps per
round, probe groups in between, training masks recomputed every ``mask_every`` steps, MLflow
logging and the runner's checkpoint after every round; the probes themselves are not timed)
against a plain
peft + transformers loop on a second copy of the same backbone, same batches, LoRA of the
merged adapter's rank on the same modules, AdamW, same clip: once with the usual
``labels=`` loss (logits at every position) and once with logits only at the label
positions, as the grasp loop computes them. Also the cost of one probe's prune+restore
(``GlobalMagnitudePruner.applied`` enter + exit) against its forward pass, on the micro-dev
batches (what a probe of the run costs) and on the larger test split: the prune+restore is a
fixed cost per probe while the forward grows with the examples, so the second measurement
gives the forward's cost per example and the smallest micro-dev size at which prune+restore
would be under 1 % of a probe. Only ratios measured side by side (and figures derived from
them) are reported as findings, never single absolute times.

Writes ``<out>/grasp_vs_grid_<scale>.json`` (command line, seeds, versions, configs, every
figure), ``<out>/grasp_vs_grid_<scale>.md`` and ``<out>/grasp_vs_grid_<scale>_seed<N>.png``
(grid dev score vs ratio with the controllers' ratio trajectories drawn over it). Run
folders (adapters, predictions) and the MLflow store go under ``--runs-dir``.

Scales: ``smoke`` (tiny random backbone, minutes: checks the machinery, the metrics are
meaningless), ``cpu`` (Gemma 3 270M, sizes pinned in ``CPU_SIZES``: 64-step fine-tunes, a
16-step controller run, 16 micro-dev examples, masks every 4 steps; about 45 minutes on 2
cores), ``gpu`` (a Llama-3-8B-class backbone with the ``full`` preset sizes, ``--device cuda
--dtype bfloat16``; not run yet: no GPU was available to this project's sessions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ARMS = ("grid", "grpo", "ppo", "target-only")
ARM_LABELS = {"grid": "grid (full runs)", "grpo": "GRASP (GRPO)", "ppo": "GRASP (PPO)", "target-only": "target-only"}
GRASP_ARMS = ("grpo", "ppo")
EXPERIMENT = "hpctl-grasp_vs_grid"
#: the issue's targets (checked and printed, never used to compute anything)
TARGET_SPEEDUP = 4.0
TARGET_SCORE_GAP = 0.5
TARGET_THROUGHPUT = 0.95
TARGET_PRUNE_FRACTION = 0.01
METRIC_KEYS = ("score", "f1", "exact_match", "rougeL", "rouge1", "rouge2", "bleu4", "loss", "sparsity")
PASS_KEYS = ("forward_passes", "backward_passes", "generation_steps", "tokens")


# ----------------------------------------------------------------------------- scales
@dataclass
class Scale:
    """Sizes of one benchmark scale (plugin options plus the benchmark's own)."""

    name: str
    plugin_config: dict[str, Any]
    k: int = 8  # grid points
    budget: int | None = None  # probes per controller run (None: the plugin's default)
    group_size: int | None = None  # None: the plugin's default
    tp_rounds: int = 2  # throughput: training rounds per measurement
    #: throughput: optimizer steps per round (None: the controller run's, as the runner computes it)
    tp_steps: int | None = None
    tp_reps: int = 3  # throughput: A/B alternations
    probe_reps: int = 5  # prune+restore vs forward: repetitions
    note: str = ""


#: sizes pinned here (not left to the moving presets) so a scale means the same run over time
CPU_SIZES = dict(source_train=48, target_train=32, micro_dev=16, dev=16, test=48, steps=64, controller_steps=16,
                 source_steps=16, target_steps=12, lr=5e-4, adapter_lr=5e-4, lora_r=8, batch_size=4, eval_batch_size=8,
                 max_len=320, max_target_len=24, max_new_tokens=16, max_context_chars=700, mask_every=4)
GPU_SIZES = dict(source_train=256, target_train=64, micro_dev=32, dev=64, test=128, steps=120, source_steps=200,
                 target_steps=100, lr=2e-4, adapter_lr=2e-4, lora_r=8, batch_size=4, eval_batch_size=8, max_len=512,
                 max_target_len=32, max_new_tokens=24, max_context_chars=1200, export_rank=64)

SCALES: dict[str, Scale] = {
    "smoke": Scale("smoke", {"preset": "smoke"}, tp_rounds=2, tp_steps=None, tp_reps=3, probe_reps=5,
                   note="tiny random 2-layer backbone: checks the machinery; metrics are meaningless"),
    # tp_steps = the controller run's steps per round: 16 controller steps // (20 probes // (4 + 1)) = 4
    "cpu": Scale("cpu", {"preset": "default", "backbone": "gemma3-270m", **CPU_SIZES}, tp_rounds=2, tp_steps=4,
                 tp_reps=3, probe_reps=3,
                 note="Gemma 3 270M (embedded, offline), XQuAD en->ar, 64-step fine-tunes, a 16-step controller run "
                      "(4 rounds of 4), 16 micro-dev examples; about 45 minutes on 2 cores"),
    "gpu": Scale("gpu", {"preset": "full", "backbone": "meta-llama/Meta-Llama-3-8B", "device": "cuda",
                         "dtype": "bfloat16", **GPU_SIZES}, tp_rounds=2, tp_steps=None, tp_reps=5, probe_reps=5,
                 note="Llama-3-8B-class backbone on one GPU in bfloat16, paper-like sizes (120-step fine-tunes, a "
                      "30-step controller run, 128 test examples, SVD-64 export); not run yet (no GPU here)"),
}


def controller_steps_per_round(controller_steps: int, budget: int, group_size: int) -> int:
    """Steps per round of the controller run, as :func:`hpctl.runner` computes them (+1: a round's baseline probe)."""
    rounds = max(1, int(budget) // (int(group_size) + 1))
    return max(1, int(controller_steps) // rounds)


def plugin_fields() -> set[str]:
    from hpctl.plugins.grasp_lora import GraspLoraConfig

    return {f.name for f in dataclasses.fields(GraspLoraConfig)}


def check_plugin_config(values: dict[str, Any], scale: str) -> None:
    """Fail early (one line) on options this version of the plugin does not have."""
    from hpctl.errors import ConfigError

    missing = sorted(set(values) - plugin_fields())
    if missing:
        extra = ""
        if scale == "gpu" and set(missing) & {"device", "dtype"}:
            extra = (" - the gpu scale needs GraspLoraConfig options 'device' and 'dtype' (GraspTask runs in "
                     "float32 on the CPU in this version; an 8B backbone would need 32 GB and days there)")
        raise ConfigError(f"grasp_lora has no option(s) {', '.join(missing)}{extra}")


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    from hpctl.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"0,5"`` -> seeds 0 and 5."""
    from hpctl.errors import ConfigError

    text = str(text).strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ConfigError(f"--seeds must be a count (3) or a comma list (0,5), got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must name at least one seed >= 0, got {text!r}")
    return seeds


def resolved(values: dict[str, Any]):
    """The resolved GraspLoraConfig of plugin options (type-checked like the CLI does)."""
    from hpctl.config import build_dataclass
    from hpctl.plugins.grasp_lora import GraspLoraConfig, resolve_config

    return resolve_config(build_dataclass(GraspLoraConfig, values, what="plugin 'grasp_lora'"))


# ----------------------------------------------------------------------------- progress
class Progress:
    """One rich progress bar per arm over its probes (stderr), as ``hpctl run`` shows them."""

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

        self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)

    def __enter__(self) -> "Progress":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def callback(self, label: str) -> Callable[[str, dict[str, Any]], None]:
        state: dict[str, Any] = {"id": None}

        def on(kind: str, info: dict[str, Any]) -> None:
            if kind == "start":
                state["id"] = self.bar.add_task(label, total=info["budget"], completed=info.get("done", 0), info="")
            elif state["id"] is None:
                return
            elif kind == "probe":
                val = ", ".join(f"{v:.3f}" for v in info["value"])
                self.bar.update(state["id"], completed=info["probe"], info=f"ratio {val} -> {info['score']:.4g}")
            elif kind == "phase":
                self.bar.update(state["id"], info=f"phase: {info['name']}")

        return on

    def note(self, text: str) -> int:
        return self.bar.add_task(text, total=None, info="")

    def done(self, task_id: int, info: str = "") -> None:
        self.bar.update(task_id, total=1, completed=1, info=info)


# ----------------------------------------------------------------------------- arms
def train_shared_adapters(base: dict[str, Any], seed: int, out_dir: Path, tracking_uri: str,
                          parent_run_id: str | None) -> dict[str, Any]:
    """Train the source and target adapters once (GraspTask setup); return where and at what cost."""
    from hpctl.plugins.grasp_lora import GraspTask
    from hpctl.runner import seed_everything
    from hpctl.tracking import Tracker

    cfg = resolved(base)
    seed_everything(seed)
    tracker = Tracker(tracking_uri, EXPERIMENT, run_name=f"shared adapters / seed{seed}", parent_run_id=parent_run_id,
                      tags={"hpctl.plugin": "grasp_lora", "hpctl.benchmark": "grasp_vs_grid", "arm": "adapters"})
    status = "FAILED"
    try:
        t0 = time.perf_counter()
        task = GraspTask(cfg, seed=seed, out_dir=out_dir)
        task.reset(seed)  # loads the backbone and data, trains and saves both adapters, merges
        wall = time.perf_counter() - t0
        seconds = dict(task.phase_seconds)
        passes = {k: dict(v) for k, v in task.phase_passes.items()}
        notes = dict(task.notes)
        task.close()
        train_s = seconds.get("source_adapter_s", 0.0) + seconds.get("target_adapter_s", 0.0)
        rec = {"seed": seed, "source_adapter": str(out_dir / "source_adapter"),
               "target_adapter": str(out_dir / "target_adapter"), "train_s": train_s, "wall_s": wall,
               "phases": seconds, "phase_passes": passes, "notes": notes, "mlflow_run_id": tracker.run_id,
               "passes": {k: int(sum(p.get(k2, 0) for n, p in passes.items() if n in ("source_adapter", "target_adapter")))
                          for k, k2 in (("forward_passes", "forward"), ("backward_passes", "backward"),
                                        ("generation_steps", "generation_steps"), ("tokens", "tokens"))}}
        for role in ("source", "target"):
            if not (out_dir / f"{role}_adapter" / "adapter_config.json").is_file():
                raise RuntimeError(f"{role} adapter was not saved under {out_dir}")
        tracker.log_params({"seed": seed, "plugin_config": dataclasses.asdict(cfg)})
        tracker.metrics({f"time/{k}": v for k, v in seconds.items()})
        tracker.metrics({"time/adapters_train_s": train_s, **{f"passes/{k}": v for k, v in rec["passes"].items()}})
        status = "FINISHED"
        return rec
    finally:
        tracker.end(status)


def warm_up_metrics(task: str, lang: str) -> None:
    """Load the metric modules once before the arms, so the first arm does not pay the one-time import."""
    from hpctl.plugins.grasp_lora.metrics import compute_metrics

    compute_metrics(task, lang, ["a"], [["a"]])


def _rel(path: Path | str) -> str:
    """``path`` relative to the working directory when it lies under it (for committed markdown)."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else str(path)
    except ValueError:
        return str(path)


def arm_spec(arm: str, base: dict[str, Any], adapters: dict[str, Any], seed: int, scale: Scale, out: Path,
             tracking_uri: str):
    """The RunSpec of one arm (every arm shares the plugin options, adapters, seed and steps)."""
    from hpctl.config import RunOptions
    from hpctl.runner import RunSpec

    pc = dict(base, baseline="none", source_adapter=adapters["source_adapter"],
              target_adapter=adapters["target_adapter"])
    common = dict(seed=seed, out=str(out), tracking_uri=tracking_uri, group_size=scale.group_size)
    if arm == "grid":
        opts = RunOptions(controller="grid", budget=scale.k, controller_config={"k": scale.k, "full_runs": True},
                          **common)
    elif arm in GRASP_ARMS:
        opts = RunOptions(controller=arm, budget=scale.budget, **common)
    elif arm == "target-only":
        pc.update(merge="target_only", p_min=0.0, start_ratio=0.0)
        opts = RunOptions(controller="fixed", budget=1, controller_config={"value": 0.0}, **common)
    else:
        raise ValueError(f"unknown arm {arm!r}")
    return RunSpec(plugin="grasp_lora", options=opts, plugin_config=pc, command="bench grasp_vs_grid")


def arm_record(arm: str, result: dict[str, Any]) -> dict[str, Any]:
    """What the tables need from one run's result, history and phase file."""
    out_dir = Path(result["out_dir"])
    history = json.loads((out_dir / "history.json").read_text()) if (out_dir / "history.json").is_file() else []
    phase_file = out_dir / "grasp_phases.json"
    ph = json.loads(phase_file.read_text()) if phase_file.is_file() else {}
    probes = [{"probe": e["probe"], "step": e["step"], "value": [float(v) for v in e["value"]],
               "score": e["score"], "kind": e["kind"]} for e in history if e.get("event") == "probe"]
    commits = [{"probe": e["probe"], "step": e["step"], "value": [float(v) for v in e["value"]],
                "loss": e.get("loss")} for e in history if e.get("event") == "commit"]
    metrics = {k: float(v) for k, v in result["metrics"].items() if isinstance(v, (int, float))}
    return {
        "arm": arm, "label": ARM_LABELS.get(arm, arm), "seed": result["seed"], "controller": result["controller"],
        "learned": result["learned"], "wall_s": float(result["wall_s"]), "phases": dict(result["phases"]),
        "phase_passes": ph.get("passes", {}), "metrics": metrics,
        "passes": {k: metrics.get(k, float("nan")) for k in PASS_KEYS},
        "probes": result["probes"], "budget": result["budget"], "faults": result.get("faults", 0),
        "controller_state": result.get("controller_state", {}), "mlflow_run_id": result.get("mlflow_run_id"),
        "out_dir": str(out_dir), "notes": ph.get("notes", {}), "backbone": ph.get("backbone"),
        "probe_trace": probes, "trajectory": commits,
        "grid_points": [{"value": p["value"], "dev_score": p["score"]} for p in probes if p["kind"] == "candidate"]
        if arm == "grid" else [],
    }


def run_arm(arm: str, spec, progress: Progress | None, parent_run_id: str | None) -> dict[str, Any]:
    from hpctl.runner import run

    cb = progress.callback(f"seed {spec.options.seed} {ARM_LABELS[arm]}") if progress else None
    result = run(spec, progress=cb, parent_run_id=parent_run_id, experiment=EXPERIMENT)
    return arm_record(arm, result)


# ----------------------------------------------------------------------------- analysis
def breakdown(rec: dict[str, Any], adapters_s: float) -> dict[str, float]:
    """An arm's wall time cut into setup / search / final fine-tune / export+test / other."""
    p = rec["phases"]
    g = lambda k: float(p.get(k, 0.0))  # noqa: E731
    setup = g("load_s") + g("source_adapter_s") + g("target_adapter_s") + g("merge_s")
    search = g("controller_s")
    final = g("final_s")
    return {
        "setup_s": setup, "search_s": search, "search_train_s": g("train_s"),
        "search_scoring_s": g("probe_s") + g("grid_dev_eval_s"), "final_train_s": g("final_train_s"),
        "export_test_s": final - g("final_train_s"), "other_s": rec["wall_s"] - setup - search - final,
        "total_s": rec["wall_s"], "total_with_adapters_s": rec["wall_s"] + adapters_s,
    }


def per_example_scores(task: str, lang: str, out_dir: str, filename: str = "test_predictions.jsonl") -> dict[str, float]:
    """The primary metric per test example (id -> percent) from a run's predictions file."""
    from hpctl.plugins.grasp_lora.metrics import compute_metrics

    path = Path(out_dir) / filename
    if not path.is_file():
        return {}
    key = "rougeL" if task == "xlsum" else "f1"
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["id"]] = float(compute_metrics(task, lang, [row["prediction"]], [row["references"]])[key])
    return out


def paired_bootstrap(a: dict[str, float], b: dict[str, float], n: int = 2000, seed: int = 0) -> dict[str, float] | None:
    """Mean of a - b over shared ids and a 95 % percentile bootstrap interval."""
    ids = sorted(set(a) & set(b))
    if not ids:
        return None
    d = np.array([a[i] - b[i] for i in ids], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": len(ids), "sd": float(d.std(ddof=1))
            if len(d) > 1 else 0.0}


def time_ratios(grid: dict[str, Any], other: dict[str, Any], adapters_s: float) -> dict[str, float]:
    """grid time / arm time in four accountings (>1: the arm is faster)."""
    rerun = float(grid["phases"].get("final_train_s", 0.0))
    g, o = grid["wall_s"], other["wall_s"]
    return {
        "as_measured": g / o,
        "with_shared_adapters": (g + adapters_s) / (o + adapters_s),
        "grid_without_rerun": (g - rerun) / o,
        "grid_without_rerun_with_shared_adapters": (g - rerun + adapters_s) / (o + adapters_s),
    }


def _needed(scaled_grid: float, fixed_grid: float, scaled_grasp: float, fixed_grasp: float,
            target: float) -> dict[str, Any]:
    """``ratio(m) = (m * S_grid + F_grid) / (m * S_grasp + F_grasp)``: now (m = 1), its limit, the m that gives ``target``.

    ``train_multiplier_needed`` is the m at which the ratio reaches ``target`` (below 1: it is reached already and
    holds down to that length; <= 0: at any length), None when the limit is not above ``target``.
    """
    now = scaled_grasp + fixed_grasp
    d: dict[str, Any] = {"scaled_grid_s": scaled_grid, "fixed_grid_s": fixed_grid, "scaled_grasp_s": scaled_grasp,
                         "fixed_grasp_s": fixed_grasp,
                         "ratio": (scaled_grid + fixed_grid) / now if now > 0 else float("nan"),
                         "limit": scaled_grid / scaled_grasp if scaled_grasp > 0 else float("nan")}
    den = scaled_grid - target * scaled_grasp
    d["train_multiplier_needed"] = (target * fixed_grasp - fixed_grid) / den if scaled_grasp > 0 and den > 0 else None
    return d


def cost_model(grid: dict[str, Any], grasp: dict[str, Any], adapters_s: float, steps: int,
               controller_steps: int | None = None, target: float = TARGET_SPEEDUP) -> dict[str, Any]:
    """Why the time ratio is what it is, from the measured phases.

    What grows with the fine-tune length ``steps`` (*scaled*): the grid's ``k`` fine-tunes (its
    ``train_s``), the grid's re-run of the winner (its ``final_train_s``) and GRASP's final
    fine-tune (``final_train_s``). What does not (*fixed*): GRASP's controller run
    (``controller_steps`` of training, its ``train_s``), its probes, and the rest of both arms
    (loading, dev scoring, export, test, tracking). Fine-tunes ``m`` times longer give
    ``ratio(m) = (m * S_grid + F_grid) / (m * S_grasp + F_grasp)``, limit ``S_grid / S_grasp``
    (the grid's fine-tunes in units of GRASP's one). The main figures (``as_measured``,
    ``grid_without_rerun``, ``with_shared_adapters``) keep the controller run at
    ``controller_steps``; ``controller_scaled`` repeats them with the controller run growing
    with the fine-tunes (``controller_steps`` kept at its fraction of ``steps``, as the
    plugin's default ``steps // 4`` does). The target-only arm's fine-tune grows with ``steps``
    too; it is not part of these grid/GRASP ratios. Every figure comes from the phases as
    measured; ``steps``/``controller_steps`` only turn multipliers into step counts.
    """
    steps = int(steps)
    controller_steps = int(controller_steps if controller_steps is not None else steps)
    p_g, p_r = grid["phases"], grasp["phases"]
    g = lambda p, k: float(p.get(k, 0.0))  # noqa: E731
    grid_points, rerun = g(p_g, "train_s"), g(p_g, "final_train_s")
    ctrl_train, final = g(p_r, "train_s"), g(p_r, "final_train_s")
    s_grid = grid_points + rerun
    f_grid = grid["wall_s"] - s_grid
    f_grasp = grasp["wall_s"] - final
    probe_s = g(p_r, "probe_s")
    out: dict[str, Any] = {
        "steps": steps, "controller_steps": controller_steps, "target": target,
        "scaled": {"grid_fine_tunes_s": grid_points, "grid_rerun_s": rerun, "grasp_final_s": final},
        "fixed": {"grasp_controller_train_s": ctrl_train, "grasp_probes_s": probe_s,
                  "grid_rest_s": f_grid, "grasp_rest_s": f_grasp - ctrl_train - probe_s, "adapters_s": adapters_s},
    }
    variants = (("as_measured", s_grid, f_grid, 0.0), ("grid_without_rerun", s_grid - rerun, f_grid, 0.0),
                ("with_shared_adapters", s_grid, f_grid, adapters_s))
    for name, sg, fg, extra in variants:
        d = _needed(sg, fg + extra, final, f_grasp + extra, target)
        m = d["train_multiplier_needed"]
        d["steps_needed"] = None if m is None else max(0, int(math.ceil(m * steps)))
        out[name] = d
    # the controller run growing with the fine-tunes (its training moves from fixed to scaled)
    cs: dict[str, Any] = {}
    for name, sg, fg, extra in variants:
        d = _needed(sg, fg + extra, final + ctrl_train, f_grasp - ctrl_train + extra, target)
        m = d["train_multiplier_needed"]
        d["steps_needed"] = None if m is None else max(0, int(math.ceil(m * steps)))
        d["controller_steps_needed"] = None if m is None else max(0, int(math.ceil(m * controller_steps)))
        cs[name] = d
    out["controller_scaled"] = cs
    # the grid scored on dev by generation (as the test metric is), at the measured generation cost
    sizes = (grid.get("notes") or {}).get("split_sizes") or {}
    n_test, n_dev = sizes.get("test"), sizes.get("dev")
    eval_test = g(p_g, "eval_test_s")
    k = len(grid.get("grid_points") or [])
    if n_test and n_dev and eval_test > 0 and k:
        per_point = eval_test * n_dev / n_test
        extra = k * per_point
        out["grid_generation_dev"] = {"per_point_s": per_point, "points": k, "extra_s": extra,
                                      "ratio": (grid["wall_s"] + extra) / grasp["wall_s"],
                                      "ratio_without_rerun": (grid["wall_s"] - rerun + extra) / grasp["wall_s"]}
    # per-step costs (steps counted by the backward passes of each phase where recorded) and the probes in
    # units of the controller run's training steps
    pp = grasp.get("phase_passes") or {}
    n_ctrl = int((pp.get("train") or {}).get("backward", 0)) or controller_steps
    n_final = int((pp.get("final_train") or {}).get("backward", 0)) or steps
    out["per_step"] = {"controller_steps": n_ctrl, "fine_tune_steps": n_final,
                       "controller_step_s": ctrl_train / n_ctrl if n_ctrl else float("nan"),
                       "fine_tune_step_s": final / n_final if n_final else float("nan")}
    if ctrl_train > 0 and n_ctrl:
        step_s = ctrl_train / n_ctrl
        out["probes"] = {"probe_s": probe_s, "probes": grasp.get("probes"), "train_steps": n_ctrl,
                         "step_s": step_s, "train_step_equivalents": probe_s / step_s}
    # fine-tunes each side pays, in units of the grasp final fine-tune
    if final > 0:
        out["fine_tunes"] = {"grid": s_grid / final, "grid_points": grid_points / final, "grid_rerun": rerun / final,
                             "grasp": 1.0, "grasp_controller_run": ctrl_train / final,
                             "grasp_with_controller_run": (final + ctrl_train) / final}
    return out


def summarise(records: dict[int, dict[str, dict[str, Any]]], adapters: dict[int, dict[str, Any]],
              task: str, lang: str, steps: int, controller_steps: int | None = None) -> dict[str, Any]:
    """Tables and comparisons per seed, plus medians over seeds (``controller_steps`` None: ``steps``)."""
    per_seed: dict[int, dict[str, Any]] = {}
    for seed, arms in records.items():
        a_s = float(adapters[seed]["train_s"]) if seed in adapters else 0.0
        rows = {}
        for arm, rec in arms.items():
            rows[arm] = {"arm": arm, "label": rec["label"], "learned": rec["learned"],
                         "times": breakdown(rec, a_s), "passes": rec["passes"],
                         "metrics": {k: rec["metrics"][k] for k in METRIC_KEYS if k in rec["metrics"]},
                         "probes": rec["probes"], "phases": rec["phases"]}
        comps = {}
        if "grid" in arms:
            grid = arms["grid"]
            grid_scores = per_example_scores(task, lang, grid["out_dir"])
            for arm in [a for a in arms if a != "grid"]:
                rec = arms[arm]
                c = {"time_ratio": time_ratios(grid, rec, a_s),
                     "pass_ratio": {k: (grid["passes"][k] / rec["passes"][k]) if rec["passes"].get(k) else None
                                    for k in ("forward_passes", "backward_passes")},
                     "metric_diff": {k: rec["metrics"][k] - grid["metrics"][k] for k in METRIC_KEYS
                                     if k in rec["metrics"] and k in grid["metrics"]},
                     "score_diff_bootstrap": paired_bootstrap(per_example_scores(task, lang, rec["out_dir"]),
                                                              grid_scores, seed=seed)}
                if arm in GRASP_ARMS:
                    c["cost_model"] = cost_model(grid, rec, a_s, steps, controller_steps)
                comps[arm] = c
        per_seed[seed] = {"rows": rows, "vs_grid": comps, "adapters_train_s": a_s}
    # medians over seeds
    med: dict[str, Any] = {}
    seeds = list(per_seed)
    arms_all = [a for a in ARMS if any(a in per_seed[s]["rows"] for s in seeds)]
    for arm in arms_all:
        rs = [per_seed[s]["rows"][arm] for s in seeds if arm in per_seed[s]["rows"]]
        med[arm] = {"n": len(rs),
                    "total_s": _med([r["times"]["total_s"] for r in rs]),
                    "total_with_adapters_s": _med([r["times"]["total_with_adapters_s"] for r in rs]),
                    "learned": {n: _med([r["learned"][n] for r in rs]) for n in rs[0]["learned"]},
                    "metrics": {k: _med([r["metrics"].get(k) for r in rs]) for k in rs[0]["metrics"]}}
        cs = [per_seed[s]["vs_grid"][arm] for s in seeds if arm in per_seed[s]["vs_grid"]]
        if cs:
            med[arm]["time_ratio"] = {k: _med([c["time_ratio"][k] for c in cs]) for k in cs[0]["time_ratio"]}
            med[arm]["metric_diff"] = {k: _med([c["metric_diff"].get(k) for c in cs]) for k in cs[0]["metric_diff"]}
    return {"per_seed": per_seed, "median": med}


def _med(values: Sequence[float | None]) -> float:
    arr = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.median(arr)) if arr else float("nan")


def criteria(summary: dict[str, Any], throughput: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's done-when checks, evaluated on the medians (GRPO arm)."""
    out: dict[str, Any] = {}
    med = summary["median"].get("grpo", {})
    tr = med.get("time_ratio") or {}
    if tr:
        out["speedup_headline"] = {"value": tr["with_shared_adapters"], "target": TARGET_SPEEDUP,
                                   "accounting": "end to end incl. the shared adapters' training, grid as run",
                                   "pass": tr["with_shared_adapters"] >= TARGET_SPEEDUP}
        worst = min(tr.values())
        out["speedup_conservative"] = {"value": worst, "target": TARGET_SPEEDUP,
                                       "accounting": "the lowest of the four accountings",
                                       "pass": worst >= TARGET_SPEEDUP}
    diff = (med.get("metric_diff") or {}).get("score")
    if diff is not None and np.isfinite(diff):
        out["score_gap"] = {"value": diff, "target": -TARGET_SCORE_GAP, "pass": diff >= -TARGET_SCORE_GAP}
    if throughput:
        r = throughput.get("ratio_vs_plain_label_only", {}).get("median")
        r2 = throughput.get("ratio_vs_plain_hf_loss", {}).get("median")
        if r is not None:
            out["throughput_like_for_like"] = {"value": r, "target": TARGET_THROUGHPUT, "pass": r >= TARGET_THROUGHPUT}
        if r2 is not None:
            out["throughput_vs_hf_loss"] = {"value": r2, "target": TARGET_THROUGHPUT, "pass": r2 >= TARGET_THROUGHPUT}
        pc = throughput.get("probe_cost") or {}
        if pc:
            v = pc["amortised_fraction"]["median"]
            group = throughput.get("group_size")
            n = pc.get("micro_dev_examples")
            acc = (f"a round of {group + 1} probes" if group else "a round of probes") + \
                (f" on the run's {n} micro-dev examples" if n else " on the run's micro-dev")
            sc = pc.get("scaling") or {}
            c: dict[str, Any] = {"value": v, "target": TARGET_PRUNE_FRACTION, "pass": v < TARGET_PRUNE_FRACTION,
                                 "cold": pc["cold_fraction"]["median"], "warm": pc["warm_fraction"]["median"]}
            if sc:
                c["min_examples_for_target"] = sc.get("min_examples_for_target")
                c["forward_per_example_s"] = sc.get("forward_per_example_s")
                c["prune_restore_amortised_s"] = sc.get("prune_restore_amortised_s")
                need = sc.get("min_examples_for_target")
                acc += (f"; prune+restore is a fixed {1e3 * sc['prune_restore_amortised_s']:.1f} ms per probe over a "
                        f"round (first at a state {1e3 * sc['prune_restore_cold_s']:.1f}, later "
                        f"{1e3 * sc['prune_restore_warm_s']:.1f}) "
                        f"vs {1e3 * sc['forward_per_example_s']:.1f} ms of forward per example (on the "
                        f"{sc['large_examples']} {sc['large_split']} examples)")
                if need is not None:
                    acc += f": under {100 * TARGET_PRUNE_FRACTION:.0f} % from {need} micro-dev examples"
            c["accounting"] = acc
            out["prune_restore_fraction"] = c
    return out


# ----------------------------------------------------------------------------- throughput
def _stats(values: Sequence[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(arr)), "min": float(arr.min()), "max": float(arr.max()),
            "values": [float(v) for v in arr]}


def hf_labels(batch) -> "Any":
    """``labels`` for the usual transformers loss: the target tokens, -100 elsewhere (the model shifts)."""
    import torch

    labels = torch.full_like(batch.input_ids, -100)
    tgt = torch.zeros_like(batch.keep)
    tgt[:, 1:] = batch.keep[:, :-1]  # keep[t] predicts token t + 1
    labels[tgt] = batch.input_ids[tgt]
    return labels


def measure_throughput(base: dict[str, Any], adapters: dict[str, Any], seed: int, *, rounds: int, steps: int,
                       reps: int, probe_reps: int, out_dir: Path, tracking_uri: str,
                       parent_run_id: str | None = None, ratio: float | None = None, group_size: int = 4,
                       say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Tokens/s of the grasp_lora training loop vs plain peft loops, alternating; probe prune+restore cost.

    A: ``ControlEnv.advance`` rounds of ``steps`` steps (the loop the controller run drives),
       a candidate probe and the baseline probe before each round (untimed), after each round what the runner's
       ``on_round`` does (MLflow metrics; a checkpoint at most every ``CHECKPOINT_EVERY_S``),
       timed, as the runner pays it.
    B1: plain peft LoRA + transformers ``labels=`` loss; B2: the same with logits only at the
       label positions (``logits_to_keep``), i.e. the grasp loop's loss without masks/wrappers.
    All three see the same batches (same ``DataOrder`` seed per alternation). Pass ``steps`` = the controller
    run's steps per round (:func:`controller_steps_per_round`) to time the loop the controller run executes.

    Probe cost: one probe's prune+restore (``applied`` enter + exit) against its forward pass, first on the
    micro-dev batches (what a probe of the run pays; the ``probe_cost`` fractions), then on the test split's
    batches. Prune+restore does not depend on the examples, the forward does; ``probe_cost["scaling"]`` has
    the forward's cost per example (test split), the fixed prune+restore cost (both measurements pooled) and
    the smallest micro-dev size at which the round's prune+restore would be under ``TARGET_PRUNE_FRACTION``
    of its forwards.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from hpctl.controllers.base import get_controller
    from hpctl.control_env import ControlEnv
    from hpctl.plugins.grasp_lora import GraspTask
    from hpctl.plugins.grasp_lora import adapters as ad
    from hpctl.plugins.grasp_lora.backbone import batched_loss, collate, load_backbone
    from hpctl.runner import CHECKPOINT_EVERY_S, RunRecorder, save_checkpoint, seed_everything
    from hpctl.tracking import Tracker

    say = say or (lambda s: None)
    # the env's episode (the controller run) is exactly the measured rounds
    cfg = resolved(dict(base, baseline="none", source_adapter=adapters["source_adapter"],
                        target_adapter=adapters["target_adapter"], steps=rounds * steps,
                        controller_steps=rounds * steps))
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    task = GraspTask(cfg, seed=seed, out_dir=out_dir)
    group = int(group_size)
    env = ControlEnv(task, group_size=group, steps_per_round=steps)
    tracker = Tracker(tracking_uri, EXPERIMENT, run_name=f"throughput / seed{seed}", parent_run_id=parent_run_id,
                      tags={"hpctl.plugin": "grasp_lora", "hpctl.benchmark": "grasp_vs_grid", "arm": "throughput"})
    status = "FAILED"
    try:
        recorder = RunRecorder(task.knob.component_names, tracker)
        env.listeners.append(recorder)
        ctrl_cls = get_controller("grpo")
        ctrl = ctrl_cls(env, ctrl_cls.make_config({}), seed=seed)
        env.reset(seed=seed)
        rho = float(cfg.start_ratio if ratio is None else ratio)
        lengths = [len(e.ids) for e in task.splits["target_train"].encoded]
        rng = np.random.default_rng(seed)
        say("loading a second copy of the backbone for the plain peft loop ...")
        plain_model, _, _ = load_backbone(cfg.backbone, cache_dir=cfg.cache_dir)
        rank = int(task.notes.get("merged_rank", 2 * int(cfg.lora_r)))
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            peft_model = get_peft_model(plain_model, LoraConfig(r=rank, lora_alpha=float(rank), lora_dropout=0.0,
                                                                target_modules=list(ad.parse_targets(cfg.targets)),
                                                                bias="none", task_type="CAUSAL_LM"))
        peft_model.train(False)  # eval mode (no dropout), as the grasp loop runs the backbone
        plain_params = [p for p in peft_model.parameters() if p.requires_grad]
        plain_opt = torch.optim.AdamW(plain_params, lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
        clip = float(cfg.grad_clip) or None
        pad = task.pad_id
        data = task.splits["target_train"].encoded

        last_checkpoint = [time.perf_counter()]

        def grasp_loop(order_seed: int, n_rounds: int, n_steps: int) -> tuple[float, int]:
            if env.done or env.steps_done + n_rounds * n_steps > task.total_steps:
                env.reset(seed=seed)
            task.order = ad.DataOrder(lengths, int(cfg.batch_size), order_seed)
            elapsed, tokens = 0.0, 0
            for _ in range(n_rounds):
                lo, hi = task.knob.low, task.knob.high
                # the interleaved probes (run, not timed): what they leave behind for training (cleared
                # overrides, a threshold index of this state) does not depend on how many there are
                cand = np.clip(rho + rng.normal(0.0, 0.1, size=1), lo, hi)
                env.probe_group(cand[:, None])
                env.baseline()
                before = task.counter.tokens
                t0 = time.perf_counter()
                env.advance(np.array([rho]))
                # what the runner's on_round does after every round
                tracker.metrics({f"controller/{k}": v for k, v in ctrl.state().items()}, env.probes)
                if time.perf_counter() - last_checkpoint[0] >= CHECKPOINT_EVERY_S:
                    recorder.checkpoint_flush()
                    save_checkpoint(out_dir, env, ctrl, recorder, tracker)
                    last_checkpoint[0] = time.perf_counter()
                elapsed += time.perf_counter() - t0
                tokens += task.counter.tokens - before
            return elapsed, tokens

        def plain_loop(order_seed: int, n: int, label_only: bool) -> tuple[float, int]:
            order = ad.DataOrder(lengths, int(cfg.batch_size), order_seed)
            batches = [collate([data[j] for j in order.next()], pad) for _ in range(n)]
            tokens = sum(int(b.attention_mask.sum()) for b in batches)
            t0 = time.perf_counter()
            for b in batches:
                plain_opt.zero_grad(set_to_none=True)
                if label_only:
                    out = peft_model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                                     logits_to_keep=b.keep, use_cache=False)
                    logits = out.logits
                    if logits.dim() == 3:
                        logits = logits.reshape(-1, logits.shape[-1])
                    loss = torch.nn.functional.cross_entropy(logits.float(), b.labels)
                else:
                    loss = peft_model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=hf_labels(b),
                                      use_cache=False).loss
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(plain_params, clip)
                plain_opt.step()
                plain_opt.zero_grad(set_to_none=True)
            return time.perf_counter() - t0, tokens

        say("throughput: warm-up ...")
        grasp_loop(10_000 + seed, 1, steps)
        plain_loop(10_000 + seed, 1, True)
        plain_loop(10_000 + seed, 1, False)
        runs: list[dict[str, Any]] = []
        for rep in range(reps):
            order_seed = 20_000 + 100 * seed + rep
            order = ["A", "B1", "B2"] if rep % 2 == 0 else ["B2", "B1", "A"]
            got: dict[str, tuple[float, int]] = {}
            for which in order:
                if which == "A":
                    got[which] = grasp_loop(order_seed, rounds, steps)
                else:
                    got[which] = plain_loop(order_seed, rounds * steps, label_only=(which == "B2"))
            if not got["A"][1] == got["B1"][1] == got["B2"][1]:
                raise RuntimeError(f"throughput loops saw different tokens: {got}")
            tps = {k: v[1] / v[0] for k, v in got.items()}
            runs.append({"order": order, "seconds": {k: v[0] for k, v in got.items()}, "tokens": got["A"][1],
                         "tokens_per_s": tps, "ratio_vs_plain_hf_loss": tps["A"] / tps["B1"],
                         "ratio_vs_plain_label_only": tps["A"] / tps["B2"]})
            say(f"throughput alternation {rep + 1}/{reps}: grasp/plain(labels=) {runs[-1]['ratio_vs_plain_hf_loss']:.3f}, "
                f"grasp/plain(label-only) {runs[-1]['ratio_vs_plain_label_only']:.3f}")
        del peft_model, plain_model, plain_opt

        # one probe: prune+restore (applied() enter + exit) vs its forward pass, on the micro-dev batches (the
        # run's probe) and on the test split's (a larger forward; prune+restore does not depend on the examples)
        pruner = task.pruner

        def probe_cost(batches: Sequence[Any], n_reps: int) -> list[dict[str, float]]:
            out = []
            for _ in range(n_reps):
                r = float(np.clip(rho + rng.normal(0.0, 0.1), task.knob.low, task.knob.high))
                row = {}
                for kind in ("cold", "warm"):  # cold: first probe at a new training state (index rebuilt)
                    if kind == "cold":
                        pruner.invalidate()
                    t0 = time.perf_counter()
                    ctx = pruner.applied(np.array([r]))
                    ctx.__enter__()
                    t1 = time.perf_counter()
                    try:
                        batched_loss(task.model, batches)
                    finally:
                        t2 = time.perf_counter()
                        ctx.__exit__(None, None, None)
                        t3 = time.perf_counter()
                    row[f"{kind}_prune_restore_s"] = (t1 - t0) + (t3 - t2)
                    row[f"{kind}_forward_s"] = t2 - t1
                row["cold_fraction"] = row["cold_prune_restore_s"] / row["cold_forward_s"]
                row["warm_fraction"] = row["warm_prune_restore_s"] / row["warm_forward_s"]
                # a round probes group + 1 values at one state: one cold, the rest warm
                row["amortised_fraction"] = ((row["cold_prune_restore_s"] + group * row["warm_prune_restore_s"])
                                             / (row["cold_forward_s"] + group * row["warm_forward_s"]))
                out.append(row)
            return out

        def examples(batches: Sequence[Any]) -> tuple[int, int]:
            return (sum(int(b.input_ids.shape[0]) for b in batches),
                    sum(int(b.attention_mask.sum()) for b in batches))

        batches = task.splits["micro_dev"].batches
        probe_runs = probe_cost(batches, probe_reps)
        large_name = "test" if task.splits["test"].batches else "dev"
        large = task.splits[large_name].batches
        say(f"probe cost: prune+restore vs a forward over the {large_name} split ...")
        large_runs = probe_cost(large, probe_reps)
        n_micro, tok_micro = examples(batches)
        n_large, tok_large = examples(large)
        fwd = lambda rows: float(np.median([r[f"{k}_forward_s"] for r in rows for k in ("cold", "warm")]))  # noqa: E731
        pr = lambda k: float(np.median([r[f"{k}_prune_restore_s"] for r in probe_runs + large_runs]))  # noqa: E731
        per_example = fwd(large_runs) / max(1, n_large)
        cold_s, warm_s = pr("cold"), pr("warm")
        amortised_s = (cold_s + group * warm_s) / (group + 1)  # per probe, over a round of group + 1 probes

        def min_examples(fixed_s: float) -> int | None:
            # fraction(n) = fixed / (n * per_example) < target  <=>  n > fixed / (target * per_example)
            if not per_example > 0:
                return None
            return int(math.floor(fixed_s / (TARGET_PRUNE_FRACTION * per_example))) + 1

        scaling = {
            "large_split": large_name, "large_examples": n_large, "large_tokens": tok_large,
            "micro_dev_examples": n_micro, "micro_dev_tokens": tok_micro,
            "forward_per_example_s": per_example,
            "forward_per_example_micro_dev_s": fwd(probe_runs) / max(1, n_micro),
            "forward_per_token_s": fwd(large_runs) / max(1, tok_large),
            "prune_restore_cold_s": cold_s, "prune_restore_warm_s": warm_s, "prune_restore_amortised_s": amortised_s,
            "prune_restore_cold_s_micro_dev": float(np.median([r["cold_prune_restore_s"] for r in probe_runs])),
            "prune_restore_cold_s_large": float(np.median([r["cold_prune_restore_s"] for r in large_runs])),
            "prune_restore_warm_s_micro_dev": float(np.median([r["warm_prune_restore_s"] for r in probe_runs])),
            "prune_restore_warm_s_large": float(np.median([r["warm_prune_restore_s"] for r in large_runs])),
            "target": TARGET_PRUNE_FRACTION,
            "min_examples_for_target": min_examples(amortised_s),
            "min_examples_for_target_cold": min_examples(cold_s),
            "min_examples_for_target_warm": min_examples(warm_s),
            "predicted_fraction_at_micro_dev": (amortised_s / (n_micro * per_example)
                                                if n_micro and per_example > 0 else float("nan")),
        }
        result = {
            "seed": seed, "ratio": rho, "rounds": rounds, "steps_per_round": steps, "alternations": reps,
            "batch_size": int(cfg.batch_size), "max_len": int(cfg.max_len), "lora_rank_plain": rank,
            "mask_every": int(cfg.mask_every), "group_size": group, "backbone": task.backbone_name,
            "runs": runs,
            "ratio_vs_plain_hf_loss": _stats([r["ratio_vs_plain_hf_loss"] for r in runs]),
            "ratio_vs_plain_label_only": _stats([r["ratio_vs_plain_label_only"] for r in runs]),
            "probe_cost": {"runs": probe_runs, "micro_dev_batches": len(batches), "micro_dev_examples": n_micro,
                           **{k: _stats([r[k] for r in probe_runs])
                              for k in ("cold_fraction", "warm_fraction", "amortised_fraction")},
                           "large": {"split": large_name, "batches": len(large), "examples": n_large,
                                     "runs": large_runs,
                                     **{k: _stats([r[k] for r in large_runs])
                                        for k in ("cold_fraction", "warm_fraction", "amortised_fraction")}},
                           "scaling": scaling},
            "mlflow_run_id": tracker.run_id,
        }
        tracker.metrics({"throughput/ratio_vs_plain_hf_loss": result["ratio_vs_plain_hf_loss"]["median"],
                         "throughput/ratio_vs_plain_label_only": result["ratio_vs_plain_label_only"]["median"],
                         "probe/amortised_fraction": result["probe_cost"]["amortised_fraction"]["median"],
                         "probe/forward_per_example_s": per_example, "probe/prune_restore_amortised_s": amortised_s,
                         **({"probe/min_micro_dev_for_target": scaling["min_examples_for_target"]}
                            if scaling["min_examples_for_target"] is not None else {})})
        status = "FINISHED"
        return result
    finally:
        task.close()
        tracker.end(status)


# ----------------------------------------------------------------------------- output
def _f(x: Any, p: int = 2) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    return f"{x:.{p}f}"


def _ratio_text(learned: dict[str, float]) -> str:
    return ", ".join(f"{v:.4f}" for v in learned.values())


def table_rows(seed_summary: dict[str, Any]) -> list[list[str]]:
    """Main table rows (one per arm) for markdown and rich."""
    rows = []
    grid = seed_summary["rows"].get("grid")
    for arm in ARMS:
        r = seed_summary["rows"].get(arm)
        if r is None:
            continue
        t, m, ps = r["times"], r["metrics"], r["passes"]
        vs = seed_summary["vs_grid"].get(arm, {})
        rows.append([
            r["label"], _ratio_text(r["learned"]), _f(t["setup_s"], 1), _f(t["search_s"], 1),
            _f(t["final_train_s"], 1), _f(t["export_test_s"], 1), _f(t["other_s"], 1), _f(t["total_s"], 1),
            _f(t["total_with_adapters_s"], 1),
            "1.00x" if arm == "grid" and grid else (f"{vs['time_ratio']['as_measured']:.2f}x" if vs else "-"),
            f"{int(ps['forward_passes'])}/{int(ps['backward_passes'])}/{int(ps['generation_steps'])}",
            _f(m.get("f1", m.get("rougeL")), 2), _f(m.get("exact_match", m.get("bleu4")), 2), _f(m.get("loss"), 4),
            _f(m.get("sparsity"), 3),
        ])
    return rows


MAIN_HEADER = ["arm", "ratio", "setup s", "search s", "final fine-tune s", "export+test s", "other s", "total s",
               "total + adapters s", "grid time / arm", "fwd/bwd/gen passes", "test F1", "test EM", "test loss",
               "sparsity"]


def phase_table(seed_summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    arms = [a for a in ARMS if a in seed_summary["rows"]]
    keys: list[str] = []
    for a in arms:
        for k in seed_summary["rows"][a]["phases"]:
            if k not in keys:
                keys.append(k)
    rows = [[k] + [_f(seed_summary["rows"][a]["phases"].get(k), 2) for a in arms] for k in keys]
    return ["phase (s)"] + [ARM_LABELS[a] for a in arms], rows


def comparison_rows(seed_summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for arm, c in seed_summary["vs_grid"].items():
        tr, md, b = c["time_ratio"], c["metric_diff"], c.get("score_diff_bootstrap")
        ci = f"{b['mean']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}] (n={b['n']})" if b else "-"
        pr = c["pass_ratio"]
        rows.append([ARM_LABELS[arm], f"{tr['as_measured']:.2f}x", f"{tr['with_shared_adapters']:.2f}x",
                     f"{tr['grid_without_rerun']:.2f}x", f"{tr['grid_without_rerun_with_shared_adapters']:.2f}x",
                     f"{_f(pr['forward_passes'])}x / {_f(pr['backward_passes'])}x",
                     f"{md.get('score', float('nan')):+.2f}", ci,
                     f"{md.get('exact_match', md.get('bleu4', float('nan'))):+.2f}", f"{md.get('loss', float('nan')):+.4f}"])
    return rows


COMP_HEADER = ["arm", "grid/arm time (as run)", "incl. shared adapters", "grid w/o re-run", "w/o re-run + adapters",
               "grid/arm fwd / bwd passes", "score diff (arm - grid)", "score diff 95% CI (paired bootstrap)",
               "EM diff", "test loss diff"]


def _steps_text(d: dict[str, Any], cm: dict[str, Any], target_text: str, controller: bool = False) -> str:
    """What one accounting of the cost model says about reaching the target by the fine-tune length."""
    m, steps = d["train_multiplier_needed"], cm["steps"]
    ctrl = (f", the controller run {d['controller_steps_needed']} steps instead of {cm['controller_steps']}"
            if controller and m is not None else "")
    if m is None:
        return f"{d['ratio']:.2f}x now; {target_text} is out of reach by longer training alone (limit {d['limit']:.2f}x)"
    if m <= 0:
        return f"{d['ratio']:.2f}x now; {target_text} holds at any fine-tune length (limit {d['limit']:.2f}x)"
    if m <= 1:
        return (f"{d['ratio']:.2f}x now; {target_text} holds down to fine-tunes {m:.2f}x as long (about "
                f"{d['steps_needed']} steps instead of {steps}{ctrl})")
    return (f"{d['ratio']:.2f}x now; {target_text} needs fine-tunes {m:.2f}x longer (about {d['steps_needed']} steps "
            f"instead of {steps}{ctrl})")


def explanation(cm: dict[str, Any], label: str) -> list[str]:
    """Sentences (with the measured numbers) on the time ratio and what would change it."""
    a, sc, fx = cm["as_measured"], cm["scaled"], cm["fixed"]
    tgt = f"{cm['target']:.0f}x"
    lines = [f"{label}: what grows with the fine-tune length ({cm['steps']} steps) is {a['scaled_grid_s']:.1f} s of the "
             f"grid's {a['scaled_grid_s'] + a['fixed_grid_s']:.1f} s (its fine-tunes {sc['grid_fine_tunes_s']:.1f} s + "
             f"the re-run {sc['grid_rerun_s']:.1f} s) and {a['scaled_grasp_s']:.1f} s of GRASP's "
             f"{a['scaled_grasp_s'] + a['fixed_grasp_s']:.1f} s (its final fine-tune); fixed: GRASP's controller run "
             f"({cm['controller_steps']} steps, {fx['grasp_controller_train_s']:.1f} s of training) and its probes "
             f"({fx['grasp_probes_s']:.1f} s), and the rest (loading, dev scoring, export, test, tracking) "
             f"{fx['grid_rest_s']:.1f} s vs {fx['grasp_rest_s']:.1f} s."]
    ps = cm.get("per_step")
    if ps:
        lines.append(f"Per optimizer step: {ps['fine_tune_step_s']:.2f} s in GRASP's final fine-tune "
                     f"({ps['fine_tune_steps']} steps), {ps['controller_step_s']:.2f} s in its controller run "
                     f"({ps['controller_steps']} steps, probes not included).")
    ft = cm.get("fine_tunes")
    if ft:
        lines.append(f"In units of GRASP's final fine-tune the grid trains {ft['grid']:.2f} fine-tunes "
                     f"({ft['grid_points']:.2f} + the re-run {ft['grid_rerun']:.2f}) and GRASP 1 plus a controller run "
                     f"worth {ft['grasp_controller_run']:.2f}; with the fine-tunes dominating the ratio tends to "
                     f"{a['limit']:.2f}x as run, {cm['grid_without_rerun']['limit']:.2f}x without the grid's re-run.")
    pr = cm.get("probes")
    if pr and pr["probe_s"] > 0:
        lines.append(f"GRASP's {pr['probes']} probes took {pr['probe_s']:.1f} s, the time of {pr['train_step_equivalents']:.1f} "
                     f"of its controller-run training steps ({pr['step_s']:.2f} s each; the controller run trained "
                     f"{pr['train_steps']}).")
    for key, text in (("as_measured", "as run"), ("grid_without_rerun", "without the grid's re-run"),
                      ("with_shared_adapters", "with the shared adapters")):
        lines.append(f"{text}: {_steps_text(cm[key], cm, tgt)}, the controller run kept at {cm['controller_steps']} "
                     f"steps and the probes as measured, at these per-step costs.")
    cs = cm.get("controller_scaled")
    if cs:
        parts = [f"{text}: {_steps_text(cs[key], cm, tgt, controller=True)}"
                 for key, text in (("as_measured", "as run"), ("grid_without_rerun", "without the re-run"),
                                   ("with_shared_adapters", "with the shared adapters"))]
        lines.append(f"If the controller run grew with the fine-tunes (kept at {cm['controller_steps']}/{cm['steps']} of "
                     f"their length; probes and the rest as measured): " + "; ".join(parts) + ".")
    g = cm.get("grid_generation_dev")
    if g:
        lines.append(f"If the grid chose its point by generation on dev (the test metric; {g['per_point_s']:.1f} s per point "
                     f"at the measured test-generation cost), it would cost {g['extra_s']:.1f} s more: "
                     f"{g['ratio']:.2f}x as run, {g['ratio_without_rerun']:.2f}x without the re-run.")
    return lines


def score_explanation(b: dict[str, Any] | None, diff: float | None, gap: float = TARGET_SCORE_GAP) -> str:
    if b is None or diff is None:
        return ""
    half = (b["hi"] - b["lo"]) / 2
    need = int(math.ceil((1.96 * b["sd"] / gap) ** 2)) if b["sd"] > 0 else None
    s = (f"score difference {diff:+.2f} points, 95% interval [{b['lo']:+.2f}, {b['hi']:+.2f}] over {b['n']} test examples "
         f"(half-width {half:.2f})")
    if need:
        s += f"; resolving {gap} points would take about {need} test examples at this per-example spread"
    return s + "."


def markdown(meta: dict[str, Any], summary: dict[str, Any], throughput: dict[str, Any] | None,
             crit: dict[str, Any], plots: list[str]) -> str:
    L = [f"# GRASP LoRA vs the {meta['k']}-point grid ({meta['scale']} scale)", "",
         f"`{meta['command']}`", "",
         f"Scale: {meta['scale_note']}. Backbone: {meta.get('backbone_name', meta['plugin_config'].get('backbone'))}. "
         f"Task {meta['task']} ({meta['lang']}), seeds {meta['seeds']}, {meta['steps']} optimizer steps per fine-tune "
         f"(every grid point, every final run, target-only), "
         + (f"a controller run of {meta['controller_steps']} steps ({meta['steps_per_round']} per round) for GRASP, "
            if meta.get("controller_steps") is not None and meta.get("steps_per_round") is not None else "")
         + f"controller budget {meta['budget']} probes (groups of {meta['group_size']}), grid k = {meta['k']}.", "",
         "**The source and target adapters are trained once per seed and shared by every arm** (loaded through "
         "`source_adapter`/`target_adapter`); their training time is listed once below, excluded from each arm's "
         "`total s` and added in `total + adapters s`. The grid's final phase re-trains the chosen point (the grid "
         "keeps no adapters); `grid w/o re-run` removes that repeat. Times are wall-clock seconds of this run, "
         "same machine, one arm after the other.", ""]
    if meta["scale"] == "smoke":
        L += ["> smoke scale: a tiny *random* backbone; every test score is expected to be ~0 and the times are "
              "dominated by fixed costs. It checks the machinery, not the method.", ""]
    for seed, s in summary["per_seed"].items():
        ap = meta["adapters"][str(seed)]["passes"]
        L += [f"## Seed {seed}", "", f"Shared adapters: {s['adapters_train_s']:.1f} s of training "
              f"(source + target; {int(ap['forward_passes'])} forward / {int(ap['backward_passes'])} backward passes).", "",
              "| " + " | ".join(MAIN_HEADER) + " |", "|" + "---|" * len(MAIN_HEADER)]
        L += ["| " + " | ".join(r) + " |" for r in table_rows(s)]
        L += ["", "`search s`: the controller phase (grid: its full fine-tunes and dev scoring; GRASP: interleaved "
              "training and probes; target-only: one probe). Passes: teacher-forced forwards / backwards / "
              "generation steps of the backbone.", ""]
        if s["vs_grid"]:
            L += ["### Against the grid", "", "| " + " | ".join(COMP_HEADER) + " |", "|" + "---|" * len(COMP_HEADER)]
            L += ["| " + " | ".join(r) + " |" for r in comparison_rows(s)]
            L += [""]
            for arm in GRASP_ARMS:
                c = s["vs_grid"].get(arm)
                if c and "cost_model" in c:
                    L += [f"**Why {ARM_LABELS[arm]} is at {c['time_ratio']['as_measured']:.2f}x** (from the phases above):", ""]
                    L += [f"- {x}" for x in explanation(c["cost_model"], ARM_LABELS[arm])]
                    se = score_explanation(c.get("score_diff_bootstrap"), c["metric_diff"].get("score"))
                    if se:
                        L += [f"- Test score: {se}"]
                    L += [""]
        head, rows = phase_table(s)
        L += ["### Every phase", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        L += ["| " + " | ".join(r) + " |" for r in rows]
        grid = next((r for a, r in s["rows"].items() if a == "grid"), None)
        if grid is not None:
            pts = meta["grid_points"].get(str(seed), [])
            if pts:
                L += ["", "Grid points (ratio: dev score): " + ", ".join(f"{p['value'][0]:.3f}: {p['dev_score']:.4f}"
                                                                        for p in pts)]
        L += [""]
    if throughput:
        L += ["## Training throughput and probe cost", "",
              f"Same process, alternating ({throughput['alternations']} alternations, order flipped every other one), "
              f"same batches (batch {throughput['batch_size']}, max length {throughput['max_len']}), "
              f"{throughput['rounds']} rounds x {throughput['steps_per_round']} steps per measurement"
              + (" (= the controller run's steps per round)"
                 if meta.get("steps_per_round") == throughput["steps_per_round"] else
                 f" (NOT the controller run's rounds of {meta['steps_per_round']} steps)"
                 if meta.get("steps_per_round") is not None else "")
              + ", backbone "
              f"{throughput['backbone']}. grasp loop = `ControlEnv.advance` rounds at ratio {throughput['ratio']:.3f} "
              f"(training masks every {throughput['mask_every']} step(s), MLflow logging, the runner's checkpoint; "
              f"a candidate and a baseline probe between rounds, not timed). Plain = peft LoRA r={throughput['lora_rank_plain']} + "
              "transformers, AdamW, same clip. Ratios of tokens/s, median [min, max]."
              + (" On the tiny backbone the 262k-entry LM head and per-step Python overheads dominate; these ratios "
                 "do not transfer to a real backbone (the cpu scale measures them on Gemma 3 270M)."
                 if meta["scale"] == "smoke" else ""), "",
              "| comparison | tokens/s ratio |", "|---|---|"]
        for key, text in (("ratio_vs_plain_hf_loss", "grasp loop / plain peft (`labels=` loss, logits at every position)"),
                          ("ratio_vs_plain_label_only", "grasp loop / plain peft (logits at label positions only, like for like)")):
            st = throughput[key]
            L.append(f"| {text} | {st['median']:.3f} [{st['min']:.3f}, {st['max']:.3f}] |")
        pc = throughput["probe_cost"]
        L += ["", "| probe prune+restore / its forward pass | median [min, max] |", "|---|---|"]
        for key, text in (("cold_fraction", "first probe at a new training state (threshold index rebuilt)"),
                          ("warm_fraction", "later probes at the same state"),
                          ("amortised_fraction", f"a round of {throughput['group_size'] + 1} probes")):
            st = pc[key]
            L.append(f"| {text} | {100 * st['median']:.2f} % [{100 * st['min']:.2f}, {100 * st['max']:.2f}] |")
        sc = pc.get("scaling")
        if sc:
            lg = pc["large"]
            st = lg["amortised_fraction"]
            need = sc["min_examples_for_target"]
            L += ["", f"Prune+restore does not depend on the examples a probe scores; the forward does. The same "
                  f"measurement against a forward over the {sc['large_examples']} {sc['large_split']} examples "
                  f"(instead of the run's {sc['micro_dev_examples']} micro-dev examples) gives:", "",
                  "| probe cost | value |", "|---|---|",
                  f"| forward per example ({sc['large_split']} split; micro-dev) | {1e3 * sc['forward_per_example_s']:.1f} ms; "
                  f"{1e3 * sc['forward_per_example_micro_dev_s']:.1f} ms |",
                  f"| prune+restore per probe, first at a state / later / a round's mean (both measurements) | "
                  f"{1e3 * sc['prune_restore_cold_s']:.1f} / {1e3 * sc['prune_restore_warm_s']:.1f} / "
                  f"{1e3 * sc['prune_restore_amortised_s']:.1f} ms |",
                  f"| prune+restore on micro-dev / on {sc['large_split']} (first at a state; later) | "
                  f"{1e3 * sc['prune_restore_cold_s_micro_dev']:.1f} / {1e3 * sc['prune_restore_cold_s_large']:.1f} ms; "
                  f"{1e3 * sc['prune_restore_warm_s_micro_dev']:.1f} / {1e3 * sc['prune_restore_warm_s_large']:.1f} ms |",
                  f"| a round of {throughput['group_size'] + 1} probes over the {sc['large_split']} split "
                  f"(median [min, max]) | {100 * st['median']:.2f} % [{100 * st['min']:.2f}, {100 * st['max']:.2f}] |",
                  f"| a round on the micro-dev, predicted from the two figures above (measured above) | "
                  f"{100 * sc['predicted_fraction_at_micro_dev']:.2f} % ({100 * pc['amortised_fraction']['median']:.2f} %) |",
                  f"| smallest micro-dev for prune+restore < {100 * sc['target']:.0f} % of a round's forwards "
                  f"(first probe at a state alone; later probes alone) | "
                  f"{need if need is not None else '-'} examples ({sc['min_examples_for_target_cold'] or '-'}; "
                  f"{sc['min_examples_for_target_warm'] or '-'}) |"]
        L += [""]
    if crit:
        L += ["## Checks against the issue's targets", ""]
        for k, c in crit.items():
            mark = "pass" if c["pass"] else "FAIL"
            val = f"{100 * c['value']:.2f} %" if k == "prune_restore_fraction" else f"{c['value']:.3f}"
            tgt = f"{100 * c['target']:.0f} %" if k == "prune_restore_fraction" else f"{c['target']}"
            extra = f" ({c['accounting']})" if "accounting" in c else ""
            L.append(f"- {k}: {val} (target {tgt}){extra}: **{mark}**")
        L += [""]
    if plots:
        L += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots] + [""]
    L += [f"MLflow: `{meta['tracking_uri']}` (parent run `{meta['mlflow_parent_run_id']}`); run folders under "
          f"`{meta['runs_dir']}`.", "",
          f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}", ""]
    return "\n".join(L)


def print_tables(console, meta: dict[str, Any], summary: dict[str, Any], throughput: dict[str, Any] | None,
                 crit: dict[str, Any]) -> None:
    from rich.table import Table

    for seed, s in summary["per_seed"].items():
        t = Table(title=f"grasp_vs_grid {meta['scale']} seed {seed} (shared adapters: {s['adapters_train_s']:.1f} s, "
                        f"not in 'total s')")
        for h in MAIN_HEADER:
            t.add_column(h, justify="left" if h == "arm" else "right")
        for r in table_rows(s):
            t.add_row(*r)
        console.print(t)
        if s["vs_grid"]:
            c = Table(title="against the grid")
            for h in COMP_HEADER:
                c.add_column(h, justify="left" if h == "arm" else "right")
            for r in comparison_rows(s):
                c.add_row(*r)
            console.print(c)
            for arm in GRASP_ARMS:
                cc = s["vs_grid"].get(arm)
                if cc and "cost_model" in cc:
                    for line in explanation(cc["cost_model"], ARM_LABELS[arm]):
                        console.print(f"  {line}", highlight=False)
    if throughput:
        t = Table(title=f"throughput ({throughput['alternations']} alternations) and probe cost")
        t.add_column("comparison")
        t.add_column("median [min, max]", justify="right")
        for key in ("ratio_vs_plain_hf_loss", "ratio_vs_plain_label_only"):
            st = throughput[key]
            t.add_row(key, f"{st['median']:.3f} [{st['min']:.3f}, {st['max']:.3f}]")
        for key in ("cold_fraction", "warm_fraction", "amortised_fraction"):
            st = throughput["probe_cost"][key]
            t.add_row(f"prune+restore / forward, {key}",
                      f"{100 * st['median']:.2f} % [{100 * st['min']:.2f}, {100 * st['max']:.2f}]")
        sc = throughput["probe_cost"].get("scaling")
        if sc:
            t.add_row(f"forward per example ({sc['large_split']} split)", f"{1e3 * sc['forward_per_example_s']:.1f} ms")
            t.add_row("prune+restore per probe (round mean)", f"{1e3 * sc['prune_restore_amortised_s']:.1f} ms")
            t.add_row(f"micro-dev examples for < {100 * sc['target']:.0f} % (run: {sc['micro_dev_examples']})",
                      str(sc["min_examples_for_target"] if sc["min_examples_for_target"] is not None else "-"))
        console.print(t)
    for k, c in crit.items():
        console.print(f"  check {k}: {c['value']:.4g} vs target {c['target']}: {'pass' if c['pass'] else 'FAIL'}",
                      highlight=False)


def plot_seed(path: Path, arms: dict[str, dict[str, Any]], title: str) -> Path | None:
    """Grid dev score vs ratio; the controllers' committed ratios over training drawn over it (twin axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = arms.get("grid")
    fig, ax = plt.subplots(figsize=(8.5, 5))
    if grid and grid["grid_points"]:
        x = [p["value"][0] for p in grid["grid_points"]]
        y = [p["dev_score"] for p in grid["grid_points"]]
        ax.plot(x, y, "o-", color="0.25", label="grid: dev score per full run")
        best = int(np.nanargmax(y))
        ax.plot([x[best]], [y[best]], "*", ms=16, color="gold", mec="k", label=f"grid choice {x[best]:.3f}")
    ax.set_xlabel("global prune ratio")
    ax.set_ylabel("dev score (grid points; higher is better)")
    ax2 = ax.twinx()
    colors = {"grpo": "C0", "ppo": "C3"}
    for arm in GRASP_ARMS:
        rec = arms.get(arm)
        if not rec:
            continue
        c = colors[arm]
        probes = [p for p in rec["probe_trace"] if p["kind"] == "candidate"]
        if probes:
            ax2.scatter([p["value"][0] for p in probes], [p["step"] for p in probes], s=12, alpha=0.35, color=c,
                        label=f"{ARM_LABELS[arm]} probes")
        traj = rec["trajectory"]
        if traj:  # each round trains at its committed ratio from the previous commit's step to its own
            xs, ys, prev = [], [], 0
            for t in traj:
                xs += [t["value"][0], t["value"][0]]
                ys += [prev, t["step"]]
                prev = t["step"]
            ax2.plot(xs, ys, color=c, lw=2, label=f"{ARM_LABELS[arm]} committed ratio (training)")
        learned = list(rec["learned"].values())[0]
        ax.axvline(learned, color=c, ls="--", lw=1, label=f"{ARM_LABELS[arm]} learned {learned:.3f}")
    ax2.set_ylabel("training step (controller run)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("hpctl", "torch", "transformers", "peft", "mlflow", "stable-baselines3", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    out["platform"] = platform.platform()
    return out


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Scales:\n" + "\n".join(f"  {s.name}: {s.note}" for s in SCALES.values()))
    p.add_argument("--scale", choices=list(SCALES), default="smoke")
    p.add_argument("--seeds", default="1", help="a count (3 -> seeds 0,1,2) or a comma list (0,5)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                   help="where the JSON, markdown and PNGs go")
    p.add_argument("--runs-dir", default=None, help="run folders and the MLflow store (default runs/grasp_vs_grid-<scale>)")
    p.add_argument("--backbone", default=None, help="override the scale's backbone (an HF id or a local path)")
    p.add_argument("--k", type=int, default=None, help="grid points (default 8, as in the paper)")
    p.add_argument("--budget", type=int, default=None, help="probes per GRASP controller run (default: the plugin's)")
    p.add_argument("--group-size", type=int, default=None)
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma list of {', '.join(ARMS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a grasp_lora option (repeatable)")
    p.add_argument("--throughput-reps", type=int, default=None, help="A/B alternations (0: skip throughput)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from hpctl.errors import HpctlError

    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    try:
        return _main(args, argv, console)
    except HpctlError as exc:
        console.print(f"error: {exc}", highlight=False, markup=False)
        return 2


def _main(args: argparse.Namespace, argv: list[str] | None, console) -> int:
    import torch
    from rich.console import Console

    from hpctl.errors import ConfigError
    from hpctl.tracking import Tracker

    if args.threads:
        torch.set_num_threads(int(args.threads))
    base_scale = SCALES[args.scale]
    scale = dataclasses.replace(base_scale, plugin_config=dict(base_scale.plugin_config))
    if args.k is not None:
        if args.k < 2:
            raise ConfigError(f"--k must be >= 2, got {args.k}")
        scale.k = args.k
    if args.budget is not None:
        scale.budget = args.budget
    if args.group_size is not None:
        scale.group_size = args.group_size
    if args.throughput_reps is not None:
        scale.tp_reps = max(0, args.throughput_reps)
    if args.backbone:
        scale.plugin_config["backbone"] = args.backbone
    scale.plugin_config.update(parse_sets(args.set))
    check_plugin_config(scale.plugin_config, scale.name)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ConfigError(f"unknown arm(s) {bad} (choose from {', '.join(ARMS)})")
    seeds = parse_seeds(args.seeds)
    cfg = resolved(scale.plugin_config)  # validates every option before anything runs
    from hpctl.plugins.grasp_lora import GraspLoraPlugin

    plugin = GraspLoraPlugin()
    budget = scale.budget or plugin.default_budget
    group = scale.group_size or plugin.default_group_size
    steps_per_round = controller_steps_per_round(int(cfg.controller_steps), budget, group)
    tp_steps = int(scale.tp_steps) if scale.tp_steps is not None else steps_per_round
    if tp_steps != steps_per_round:
        console.print(f"note: throughput rounds of {tp_steps} step(s), the controller run's are {steps_per_round}",
                      highlight=False, markup=False)
    runs_dir = Path(args.runs_dir or Path("runs") / f"grasp_vs_grid-{scale.name}").resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{runs_dir / 'mlflow.db'}"
    tracking_shown = f"sqlite:///{_rel(runs_dir / 'mlflow.db')}"
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0] if argv is None else "benchmarks/grasp_vs_grid.py",
                                                              *(sys.argv[1:] if argv is None else argv)])
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    parent = Tracker(tracking_uri, EXPERIMENT, run_name=f"grasp_vs_grid {scale.name}",
                     tags={"hpctl.plugin": "grasp_lora", "hpctl.benchmark": "grasp_vs_grid", "scale": scale.name})
    parent.log_params({"command": command, "seeds": seeds, "scale": scale.name, "k": scale.k, "budget": budget,
                       "group_size": group, "steps_per_round": steps_per_round, "plugin_config": scale.plugin_config, "arms": arms})
    status = "FAILED"
    t_all = time.perf_counter()
    try:
        adapters: dict[int, dict[str, Any]] = {}
        records: dict[int, dict[str, dict[str, Any]]] = {}
        throughput = None
        with Progress(console) as prog:
            for seed in seeds:
                sd = runs_dir / stamp / f"seed{seed}"
                tid = prog.note(f"seed {seed}: shared source + target adapters")
                adapters[seed] = train_shared_adapters(scale.plugin_config, seed, sd / "adapters", tracking_uri,
                                                       parent.run_id)
                prog.done(tid, f"{adapters[seed]['train_s']:.1f} s of training")
                if seed == seeds[0]:
                    warm_up_metrics(cfg.task, cfg.lang)
                records[seed] = {}
                for arm in arms:
                    spec = arm_spec(arm, scale.plugin_config, adapters[seed], seed, scale, sd / arm, tracking_uri)
                    records[seed][arm] = run_arm(arm, spec, prog, parent.run_id)
                    # what is done so far, in case a later arm fails (the run folders keep the rest)
                    (runs_dir / stamp / "progress.json").write_text(json.dumps(_jsonable(
                        {"command": command, "adapters": adapters, "runs": records}), indent=1) + "\n")
            if scale.tp_reps > 0:
                tid = prog.note("throughput and probe cost")
                learned = records[seeds[0]].get("grpo", {}).get("learned")
                throughput = measure_throughput(
                    scale.plugin_config, adapters[seeds[0]], seeds[0], rounds=scale.tp_rounds, steps=tp_steps,
                    reps=scale.tp_reps, probe_reps=scale.probe_reps, out_dir=runs_dir / stamp / "throughput",
                    tracking_uri=tracking_uri, parent_run_id=parent.run_id,
                    ratio=None if not learned else float(list(learned.values())[0]), group_size=group,
                    say=lambda s: prog.bar.update(tid, info=s))
                prog.done(tid)
        summary = summarise(records, adapters, cfg.task, cfg.lang, int(cfg.steps), int(cfg.controller_steps))
        crit = criteria(summary, throughput)
        first = next(iter(records.values()))
        backbone_name = next((r["backbone"] for r in first.values() if r.get("backbone")), None)
        meta = {
            "benchmark": "grasp_vs_grid", "scale": scale.name, "scale_note": scale.note, "command": command,
            "argv": list(sys.argv[1:] if argv is None else argv), "seeds": seeds, "created_utc": stamp,
            "k": scale.k, "budget": budget, "group_size": group, "steps": int(cfg.steps),
            "controller_steps": int(cfg.controller_steps), "steps_per_round": steps_per_round, "arms": arms,
            "task": cfg.task, "lang": cfg.lang, "plugin_config": scale.plugin_config,
            "resolved_plugin_config": dataclasses.asdict(cfg),
            "arm_specs": {a: arm_spec(a, scale.plugin_config, adapters[seeds[0]], seeds[0], scale, Path("<run>"),
                                      tracking_uri).to_json() for a in arms},
            "throughput_config": {"rounds": scale.tp_rounds, "steps": tp_steps, "reps": scale.tp_reps,
                                  "probe_reps": scale.probe_reps, "controller_steps_per_round": steps_per_round},
            "tracking_uri": tracking_shown, "mlflow_parent_run_id": parent.run_id, "runs_dir": _rel(runs_dir / stamp),
            "versions": versions(), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "adapters": {str(s): a for s, a in adapters.items()},
            "grid_points": {str(s): r["grid"]["grid_points"] for s, r in records.items() if "grid" in r},
            "backbone_name": backbone_name,
        }
        plots = []
        for seed, arms_rec in records.items():
            try:
                png = plot_seed(out / f"grasp_vs_grid_{scale.name}_seed{seed}.png", arms_rec,
                                f"grasp_vs_grid {scale.name}, seed {seed}: grid dev score and controller ratios")
                if png:
                    plots.append(str(png))
                    parent.artifact(png)
            except Exception as exc:  # noqa: BLE001 - a plot never costs the results
                console.print(f"plot failed: {exc}", markup=False)
        meta["wall_s"] = time.perf_counter() - t_all
        doc = {**meta, "summary": summary, "throughput": throughput, "criteria": crit, "plots": plots,
               "runs": {str(s): r for s, r in records.items()}}
        js = out / f"grasp_vs_grid_{scale.name}.json"
        md = out / f"grasp_vs_grid_{scale.name}.md"
        js.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
        md.write_text(markdown(meta, summary, throughput, crit, plots))
        parent.artifact(js)
        parent.artifact(md)
        med = summary["median"]
        for arm, m in med.items():
            parent.metrics({f"{arm}/total_s": m["total_s"], f"{arm}/score": m["metrics"].get("score", float("nan"))})
            for k, v in (m.get("time_ratio") or {}).items():
                parent.metric(f"{arm}/time_ratio_{k}", v)
        print_tables(Console(width=max(160, Console().width)), meta, summary, throughput, crit)
        console.print(f"wrote {js}, {md}" + (f", {', '.join(plots)}" if plots else "") +
                      f" in {meta['wall_s']:.0f} s", highlight=False)
        status = "FINISHED"
        return 0
    finally:
        parent.end(status)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


if __name__ == "__main__":
    raise SystemExit(main())
