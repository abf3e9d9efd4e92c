"""Benchmark: every controller on the synthetic landscapes, same budget, same seeds.

Run:  python benchmarks/controllers.py [--seeds 10] [--budget 64] [--controllers grpo,ppo,...]

Scenarios (knob in [0, 1], start at 0.5, width 0.15, 1000 training steps): peaked
landscapes with optima 0.05, 0.37, 0.6, 0.9 at noise 0.01 and 0.05; a drifting optimum
(0.5 -> 0.8 over the run); two peaks (global at 0.25, a wider 0.7-high decoy at 0.75);
a flat plateau (optimal set [0.15, 0.45]); and a 2-D knob (optimum (0.3, 0.7)).

Each (controller, scenario, seed) is one run as the runner does it: ``ControlEnv`` with
``group_size`` G and ``steps_per_round = total_steps // (budget // (G + 1))``, the
controller built with its default config and the seed, ``env.reset(seed)``,
``run(budget)``. Scored at the end of training (progress 1): the distance of the
learned value to the optimal set, the noise-free reward there, the probes used, and
success = distance <= 0.02. Times are only compared side by side (ratio to grpo in the
same process), never as absolute claims.

Writes ``benchmarks/results/controllers.json`` (command line, seeds, budget, versions,
every run, the summary) and ``benchmarks/results/controllers.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpctl.controllers.base import get_controller
from hpctl.envs import make_landscape_env
from hpctl.runner import steps_per_round

CONTROLLERS = ["grpo", "ppo", "sac", "a2c", "td3", "random", "grid"]
SUCCESS = 0.02


@dataclass(frozen=True)
class Scenario:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    *[Scenario(f"peaked {o} n{n}", {"shape": "peaked", "optimum": o, "noise": n})
      for n in (0.01, 0.05) for o in (0.05, 0.37, 0.6, 0.9)],
    Scenario("drift 0.5->0.8", {"shape": "peaked", "optimum": 0.5, "drift": 0.3, "noise": 0.01}),
    Scenario("two-peaked 0.25", {"shape": "two-peaked", "optimum": 0.25, "noise": 0.01}),
    Scenario("flat 0.3+-0.15", {"shape": "flat", "optimum": 0.3, "noise": 0.01}),
    Scenario("2-D (0.3,0.7)", {"shape": "peaked", "optimum": (0.3, 0.7), "noise": 0.01}),
]


def run_one(controller: str, scenario: Scenario, seed: int, budget: int, group_size: int) -> dict[str, Any]:
    env = make_landscape_env(group_size=group_size, steps_per_round=steps_per_round(1000, budget, group_size),
                             **scenario.kwargs)
    cls = get_controller(controller)
    ctrl = cls(env, cls.make_config({}), seed=seed)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    learned = np.asarray(ctrl.run(budget), dtype=np.float64)
    wall = time.perf_counter() - t0
    ls = env.task.landscape
    return {
        "controller": controller, "scenario": scenario.name, "seed": seed,
        "learned": learned.tolist(), "optimum_end": ls.optimum_at(1.0).tolist(),
        "distance": ls.distance(learned, 1.0), "true_reward": ls(learned, 1.0),
        "probes": env.probes, "wall_s": wall,
    }


def _q(x: list[float]) -> tuple[float, float, float]:
    a = np.asarray(x, dtype=np.float64)
    return float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75))


def summarise(runs: list[dict[str, Any]], controllers: list[str], scenarios: list[str]) -> list[dict[str, Any]]:
    wall = {c: sum(r["wall_s"] for r in runs if r["controller"] == c) for c in controllers}
    ref = wall.get("grpo") or None
    rows = []
    for s in scenarios:
        for c in controllers:
            rs = [r for r in runs if r["controller"] == c and r["scenario"] == s]
            if not rs:
                continue
            d, tr = _q([r["distance"] for r in rs]), _q([r["true_reward"] for r in rs])
            rows.append({
                "scenario": s, "controller": c, "n": len(rs),
                "dist_median": d[0], "dist_q25": d[1], "dist_q75": d[2],
                "reward_median": tr[0], "reward_q25": tr[1], "reward_q75": tr[2],
                "probes_median": float(np.median([r["probes"] for r in rs])),
                "probes_max": int(max(r["probes"] for r in rs)),
                "success": float(np.mean([r["distance"] <= SUCCESS for r in rs])),
                "time_vs_grpo": (wall[c] / ref) if ref else None,
            })
    return rows


def overall(runs: list[dict[str, Any]], controllers: list[str]) -> list[dict[str, Any]]:
    out = []
    ref = sum(r["wall_s"] for r in runs if r["controller"] == "grpo") or None
    for c in controllers:
        rs = [r for r in runs if r["controller"] == c]
        if rs:
            d = _q([r["distance"] for r in rs])
            out.append({"controller": c, "runs": len(rs), "dist_median": d[0], "dist_q25": d[1], "dist_q75": d[2],
                        "success": float(np.mean([r["distance"] <= SUCCESS for r in rs])),
                        "time_vs_grpo": (sum(r["wall_s"] for r in rs) / ref) if ref else None})
    return out


def versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3
    import torch

    from importlib.metadata import version

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__,
            "hpctl": version("hpctl"), "platform": platform.platform()}


def _fmt_iqr(m: float, lo: float, hi: float, p: int = 3) -> str:
    return f"{m:.{p}f} [{lo:.{p}f}, {hi:.{p}f}]"


def markdown(rows: list[dict[str, Any]], totals: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Controllers on synthetic landscapes",
        "",
        f"`{meta['command']}`",
        "",
        f"Budget {meta['budget']} probes, group size {meta['group_size']}, seeds {meta['seeds']}. "
        f"Distance = |learned - optimal set| at the end of training; reward = noise-free landscape value there; "
        f"success = distance <= {SUCCESS}. Medians with [25 %, 75 %]. Time: total wall time relative to grpo, "
        "same process, side by side.",
        "",
        "## Overall",
        "",
        "| controller | runs | distance | success | time vs grpo |",
        "|---|---|---|---|---|",
    ]
    for t in totals:
        tv = "" if t["time_vs_grpo"] is None else f"{t['time_vs_grpo']:.1f}x"
        lines.append(f"| {t['controller']} | {t['runs']} | {_fmt_iqr(t['dist_median'], t['dist_q25'], t['dist_q75'])} "
                     f"| {t['success']:.0%} | {tv} |")
    lines += ["", "## Per scenario", "",
              "| scenario | controller | distance | true reward | probes (median / max) | success |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        dist = _fmt_iqr(r["dist_median"], r["dist_q25"], r["dist_q75"])
        lines.append(f"| {r['scenario']} | {r['controller']} | {dist} "
                     f"| {_fmt_iqr(r['reward_median'], r['reward_q25'], r['reward_q75'])} "
                     f"| {r['probes_median']:.0f} / {r['probes_max']} | {r['success']:.0%} |")
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}", ""]
    return "\n".join(lines)


def print_tables(rows: list[dict[str, Any]], totals: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if console.width < 130:  # not a wide terminal (a pipe, a log): do not wrap the cells
        console = Console(width=130)
    t = Table(title=title, show_lines=False)
    for col in ("scenario", "controller", "distance med [IQR]", "true reward med [IQR]", "probes", "success"):
        t.add_column(col, justify="left" if col in ("scenario", "controller") else "right")
    last = None
    for r in rows:
        if last is not None and r["scenario"] != last:
            t.add_section()
        last = r["scenario"]
        best = r["success"] >= 0.5
        t.add_row(r["scenario"], r["controller"], _fmt_iqr(r["dist_median"], r["dist_q25"], r["dist_q75"]),
                  _fmt_iqr(r["reward_median"], r["reward_q25"], r["reward_q75"]),
                  f"{r['probes_median']:.0f}/{r['probes_max']}",
                  f"[bold]{r['success']:.0%}[/bold]" if best else f"{r['success']:.0%}")
    console.print(t)
    o = Table(title="overall")
    for col in ("controller", "runs", "distance med [IQR]", "success", "time vs grpo"):
        o.add_column(col, justify="left" if col == "controller" else "right")
    for x in totals:
        o.add_row(x["controller"], str(x["runs"]), _fmt_iqr(x["dist_median"], x["dist_q25"], x["dist_q75"]),
                  f"{x['success']:.0%}", "" if x["time_vs_grpo"] is None else f"{x['time_vs_grpo']:.1f}x")
    console.print(o)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 per (controller, scenario)")
    p.add_argument("--budget", type=int, default=64, help="probes per run")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--controllers", default=",".join(CONTROLLERS))
    p.add_argument("--scenarios", default="", help="only scenarios whose name contains one of these (comma list)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny MLPs: 1 is fastest)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    for c in controllers:
        get_controller(c)  # fail early on a typo
    wanted = [w.strip() for w in args.scenarios.split(",") if w.strip()]
    scenarios = [s for s in SCENARIOS if not wanted or any(w in s.name for w in wanted)]
    seeds = list(range(args.seeds))
    runs: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for s in scenarios:
        for c in controllers:
            for seed in seeds:
                runs.append(run_one(c, s, seed, args.budget, args.group_size))
        print(f"  {s.name}: done ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr, flush=True)
    rows = summarise(runs, controllers, [s.name for s in scenarios])
    totals = overall(runs, controllers)
    meta = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
            "seeds": seeds, "budget": args.budget, "group_size": args.group_size, "controllers": controllers,
            "scenarios": [{"name": s.name, **{k: (list(v) if isinstance(v, tuple) else v)
                                              for k, v in s.kwargs.items()}} for s in scenarios],
            "torch_threads": args.threads, "versions": versions(), "success_threshold": SUCCESS}
    print_tables(rows, totals, f"controllers, budget {args.budget}, {len(seeds)} seeds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "controllers.json").write_text(json.dumps({**meta, "summary": rows, "overall": totals, "runs": runs},
                                                     indent=1) + "\n")
    (out / "controllers.md").write_text(markdown(rows, totals, meta))
    print(f"wrote {out / 'controllers.json'} and {out / 'controllers.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
