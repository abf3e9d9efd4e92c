"""backbone_prune benchmarks: a probe's prune+restore cost, and GRPO / random search against a grid.

``speed``: on the default preset's backbone (Gemma 3 270M) and micro-dev split, time ``--probes``
probes at random sparsities and split each into forming the masked weights plus putting the
training weights back (``BackbonePruner.apply_seconds``) and the rest (the forward passes). The
issue's target: prune+restore at most 5 % of a probe. Process CPU seconds are printed too (wall
time grows with everyone else's load on a shared machine)::

    python -m benchmarks.backbone_prune speed --probes 6
    python -m benchmarks.backbone_prune speed --preset smoke --probes 4     # the tiny backbone

``compare`` (one seed per call, so a long benchmark runs in parts): the learned sparsity of each
controller (``--controllers grpo,random``, plus ``tpe`` etc. where Optuna is installed) against a
grid of ``--grid`` sparsities spread over the knob's range, each a full recovery fine-tune
(``BackbonePruneTask.full_run``) scored by the reward on the dev split; every choice (each
controller's learned sparsity and the grid's best point) is then scored the same way, so the
losses and rewards compare like with like. Reports wall seconds per arm and the time ratio
grid / controller. One JSON file per part under ``--out``::

    python -m benchmarks.backbone_prune compare --seed 0 --preset smoke --grid 3 --budget 5   # seconds
    python -m benchmarks.backbone_prune compare --seed 0 --set dev=96        # Gemma: hours on 2 cores
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


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


def compare(preset: str, seed: int, controllers: list[str], grid: int, budget: int | None, out_dir: Path,
            sets: dict[str, Any]) -> dict[str, Any]:
    """One seed of the benchmark: each controller's run, the grid of full recoveries, each choice scored."""
    from hpctl.config import RunOptions
    from hpctl.plugins.backbone_prune import BackbonePruneConfig, BackbonePrunePlugin
    from hpctl.rundir import RunSpec
    from hpctl.runner import run

    plugin = BackbonePrunePlugin()
    part: dict[str, Any] = {"seed": seed, "preset": preset, "set": sets, "controllers": {}, "grid": []}
    config = {"preset": preset, **sets}
    for name in controllers:
        t0 = time.perf_counter()
        result = run(RunSpec("backbone_prune", RunOptions(controller=name, seed=seed, budget=budget,
                                                          out=str(out_dir / f"seed{seed}-{name}")),
                             plugin_config=dict(config)), overwrite=True)
        part["controllers"][name] = {"learned": result["learned"], "wall_s": time.perf_counter() - t0,
                                     "controller_s": result["phases"].get("controller_s"),
                                     "metrics": {k: result["metrics"][k] for k in
                                                 ("sparsity", "dev_loss", "dense_dev_loss", "dev_reward", "reward")}}
    with tempfile.TemporaryDirectory(prefix="bp-grid-") as tmp:
        task = plugin.make_task(BackbonePruneConfig(**config), seed=seed, out_dir=Path(tmp))
        task.reset(seed)
        values = [task.knob.from_unit(u) for u in np.linspace(0.0, 1.0, grid)]
        t0 = time.perf_counter()
        for v in values:
            t1 = time.perf_counter()
            reward = task.full_run(v)
            dev = task._dev_split()  # the state is the point's recovery: its dev measures, read back
            part["grid"].append({"value": task.knob.to_dict(v), "dev_reward": reward,
                                 "dev_loss": task.loss_at(dev, v), "dense_dev_loss": task.reference(dev, task.fine_tune_steps),
                                 "sparsity": task.sparsity(v)["all"], "wall_s": time.perf_counter() - t1})
        part["grid_wall_s"] = time.perf_counter() - t0
        best = max(part["grid"], key=lambda g: g["dev_reward"])
        part["grid_choice"] = best["value"]
        # each controller's learned value scored as a grid point (the same full recovery and measure)
        for name, arm in part["controllers"].items():
            v = task.knob.as_array(list(arm["learned"].values()))
            arm["dev_reward_as_grid_point"] = task.full_run(v)
            arm["time_ratio_grid_over_run"] = part["grid_wall_s"] / arm["wall_s"]
        task.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"part-seed{seed}.json").write_text(json.dumps(part, indent=2, default=float) + "\n")
    return part


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
    c.add_argument("--controllers", default="grpo,random")
    c.add_argument("--grid", type=int, default=8)
    c.add_argument("--budget", type=int, default=None)
    c.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "backbone_prune"))
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a plugin option")
    args = p.parse_args(argv)
    if args.cmd == "speed":
        res = speed(args.preset, args.probes, args.seed, _sets(args.set))
    else:
        res = compare(args.preset, args.seed, [x for x in args.controllers.split(",") if x], args.grid, args.budget,
                      Path(args.out), _sets(args.set))
    print(json.dumps(res, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
