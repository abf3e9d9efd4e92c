"""Benchmark: every controller on the synthetic landscapes, same budget, same seeds.

Run (all of it; about an hour on two shared cores, SB3 dominates)::

    python benchmarks/controllers.py --seeds 30 --ablations --warm-start

or in parts that each write their runs, then merge them into the results::

    python benchmarks/controllers.py --seeds 30 --controllers grpo,random,grid --ablations --warm-start --part search
    python benchmarks/controllers.py --seeds 30 --controllers ppo,a2c --part onpolicy
    python benchmarks/controllers.py --seeds 30 --controllers sac,td3 --noise 0.01 --part offpolicy-n0.01
    ...
    python benchmarks/controllers.py --merge

Landscapes (knob in [0, 1], training starts at 0.5, peak width 0.15, 1000 training steps):
peaked with optima 0.03, 0.12, 0.37, 0.63, 0.88, 0.97 (near both bounds, none at the start
+- a commit step of 0.3 or 0.5); two peaks in both orientations (the global one at 0.25 or
0.75, a wider 0.7-high decoy at its mirror image); the registered drift (optimum 0.3 at the
start of training, 0.7 at the end); a 2-D knob (optimum (0.3, 0.7)). Each at probe noise
0.01, 0.05 and 0.1.

Each (controller, scenario, seed) is one run as the runner does it: ``ControlEnv`` with
group size G and ``steps_per_round(1000, budget, G)``, the controller with its default
config and the seed, ``env.reset(seed)``, ``run(budget)``. The learned value is what
``run`` returns - the value the final phase uses (the committed value for GRPO and the SB3
agents, the best probe for grid and random search) - scored at the end of training
(progress 1, where a drifting optimum has arrived): ``distance`` to the optimal set,
``trapped`` = distance > 0.1, ``success`` = distance <= 0.02. ``best_probe_distance`` is
the distance of the single best-scoring probe, reported beside it. ``updates`` is the number
of gradient steps on the controller's policy. Times are only compared side by side (ratio
to grpo in the same process), never as absolute claims.

``--ablations`` adds GRPO with one design choice switched back each (see
``ABLATIONS``), on every scenario. ``--warm-start`` adds the warm-start experiment: GRPO
runs on a source landscape, then a landscape whose optimum moved by 0.05 is learned once
from scratch and once warm-started from the source run's policy; reported: the probes until
the committed value is within 0.02 of the optimum.

A GRPO variant is a controller name with its settings in brackets, joined by ``;``. To try one on
the seeds the defaults were chosen on (1000-1029, not the reported 0-29), printing the tables and
writing them away from the committed results::

    python benchmarks/controllers.py --seeds 1000-1029 --controllers "grpo,grpo[policy_lr_sigma=0.4;epochs=5]" --out /tmp/try

Writes ``controllers.json`` (command lines, seeds, versions, every run, the summaries) and
``controllers.md`` to ``--out`` (default ``benchmarks/results``), or with ``--part NAME``
``parts/controllers-NAME.json`` there, which ``--merge`` combines; the writing is in
:mod:`benchmarks.controller_report`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script (python benchmarks/controllers.py): the report is a sibling module
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.controller_report import (  # noqa: E402
    SUCCESS,
    TRAPPED,
    dumps,
    print_tables,
    unpack_runs,
    versions,
    write,
)
from hpctl.control_env import ControlEnv  # noqa: E402
from hpctl.controllers.base import get_controller  # noqa: E402
from hpctl.errors import ConfigError  # noqa: E402
from hpctl.envs import make_landscape_env  # noqa: E402
from hpctl.envs.landscapes import Landscape, LandscapeTask  # noqa: E402
from hpctl.runner import steps_per_round  # noqa: E402

CONTROLLERS = ["grpo", "ppo", "a2c", "sac", "td3", "random", "grid"]
START = 0.5  # every landscape's training starts at the knob's middle
NOISES = (0.01, 0.05, 0.1)
TOTAL_STEPS = 1000
#: commit steps the optima must not sit at (start +- step): GRPO's default and the old one
COMMIT_STEPS = (0.3, 0.5)


@dataclass(frozen=True)
class Scenario:
    """A landscape (``kwargs``: :class:`~hpctl.envs.landscapes.Landscape`'s fields plus ``noise``)
    and where training starts on it."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    landscape: str = ""
    noise: float = 0.01
    single_peak: bool = False
    start: float = START


LANDSCAPES: list[tuple[str, dict[str, Any], bool]] = [
    *[(f"peaked {o}", {"shape": "peaked", "optimum": o}, True) for o in (0.03, 0.12, 0.37, 0.63, 0.88, 0.97)],
    ("two-peaked 0.25", {"shape": "two-peaked", "optimum": 0.25}, False),  # decoy at 0.75
    ("two-peaked 0.75", {"shape": "two-peaked", "optimum": 0.75}, False),  # decoy at 0.25
    ("drift 0.3->0.7", {"shape": "peaked", "optimum": 0.3, "drift": 0.4}, False),  # hpctl/LandscapeDrift-v0
    ("2-D (0.3; 0.7)", {"shape": "peaked", "optimum": (0.3, 0.7)}, True),
]
SCENARIOS = [Scenario(f"{name} n{n}", {**kw, "noise": n}, name, n, single)
             for n in NOISES for name, kw, single in LANDSCAPES]

for _name, _kw, _ in LANDSCAPES:  # the benchmark must not flatter a commit step
    for _o in np.atleast_1d(_kw["optimum"]):
        assert all(abs(abs(_o - START) - s) > 0.01 for s in COMMIT_STEPS), (_name, _o)

#: GRPO with one choice switched back (name -> settings); each row of the ablation table. ``paper``
#: switches every addition off at once. Ablations whose switch measured nothing (sigma_floor=best,
#: max_kl=0, epoch_check=none, adv=population,1e-8, max_step=0.3) went with their settings; their
#: runs are dropped from the results when parts are merged (:data:`REMOVED_ABLATIONS`).
ABLATIONS: dict[str, dict[str, Any]] = {
    "paper": {"paper": True},
    "space=clamp": {"space": "clamp"},
    "sampling=iid": {"sampling": "iid"},
    "lambda_reg=0": {"lambda_reg": 0.0},
    "lambda_reg=0.5": {"lambda_reg": 0.5},
    "clip_eps=0.2": {"clip_eps": 0.2},
    "commit_check=probe": {"commit_check": "probe"},
    "commit_check=none": {"commit_check": "none"},
    "trend=none": {"trend": "none"},
    "answer=committed": {"answer": "committed"},
    "vertex_t=3": {"vertex_t": 3.0},
    "revisit=none": {"revisit": "none"},
    "shaping=nes": {"shaping": "nes"},  # a variant, not a switch-back: rank utilities in place of z-scores
}
#: ablations of earlier results whose settings no longer exist
REMOVED_ABLATIONS = ("sigma_floor=best", "max_kl=0", "epoch_check=none", "adv=population,1e-8", "max_step=0.3")

#: warm start: (source optimum, target optimum), a similar landscape whose optimum moved
WARM_PAIRS = [(0.12, 0.17), (0.88, 0.83), (0.30, 0.35), (0.63, 0.58)]


# ---------------------------------------------------------------------- runs ------
def variant_settings(controller: str) -> dict[str, Any]:
    """The settings of ``"name[...]"``: an ``ABLATIONS`` key, or ``key=value`` pairs joined by ``;``
    (``grpo[policy_lr_sigma=0.4;epochs=5]``: a variant to try on the selection seeds); ``{}`` for a plain name."""
    inside = controller.partition("[")[2].rstrip("]")
    if not inside:
        return {}
    if inside in ABLATIONS:
        return ABLATIONS[inside]
    pairs = [item.partition("=") for item in inside.split(";")]
    if any(not eq or not key.strip() for key, eq, _ in pairs):
        raise SystemExit(f"controllers.py: error: {controller!r}: inside [...] give an ablation "
                         f"({', '.join(ABLATIONS)}) or key=value pairs joined by ';'")
    return {key.strip(): value.strip() for key, _, value in pairs}


def make_controller(controller: str, env, seed: int):
    """``"grpo"``, ``"grpo[ablation]"`` (see ``ABLATIONS``) or ``"grpo[key=value;...]"``, else a
    registered controller."""
    cls = get_controller(controller.partition("[")[0])
    return cls(env, cls.make_config(variant_settings(controller)), seed=seed)


def make_env(scenario: Scenario, budget: int, group_size: int) -> ControlEnv:
    """The scenario's landscape as the runner builds it: ``TOTAL_STEPS`` steps, rounds spanning them,
    training starting at ``scenario.start``."""
    kw = dict(scenario.kwargs)
    noise = kw.pop("noise", 0.01)
    kw["optimum"] = tuple(float(o) for o in np.atleast_1d(kw.get("optimum", 0.37)))
    task = LandscapeTask(Landscape(**kw), noise=noise, total_steps=TOTAL_STEPS, default=scenario.start)
    return ControlEnv(task, group_size=group_size, steps_per_round=steps_per_round(TOTAL_STEPS, budget, group_size))


def run_one(controller: str, scenario: Scenario, seed: int, budget: int, group_size: int) -> dict[str, Any]:
    env = make_env(scenario, budget, group_size)
    ctrl = make_controller(controller, env, seed)
    best: dict[str, Any] = {"score": -np.inf, "value": None}

    def on_probe(e: dict[str, Any]) -> None:
        if e["event"] == "probe" and np.isfinite(e["score"]) and e["score"] > best["score"]:
            best.update(score=e["score"], value=np.asarray(e["value"], dtype=np.float64))

    env.listeners.append(on_probe)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    learned = np.asarray(ctrl.run(budget), dtype=np.float64)
    wall = time.perf_counter() - t0
    ls = env.task.landscape
    state = ctrl.state()
    return {
        "controller": controller, "scenario": scenario.name, "seed": seed,
        "learned": learned.tolist(), "optimum_end": ls.optimum_at(1.0).tolist(),
        "distance": ls.distance(learned, 1.0), "true_reward": ls(learned, 1.0),
        "best_probe_distance": None if best["value"] is None else ls.distance(best["value"], 1.0),
        "probes": env.probes, "updates": int(state.get("updates", 0)), "wall_s": wall,
    }


def warm_start_one(pair: tuple[float, float], noise: float, seed: int, budget: int, group_size: int) -> dict[str, Any]:
    """Source run, then the target landscape cold and warm: probes until within SUCCESS."""
    from hpctl.controllers.grpo import GRPO

    spr = steps_per_round(TOTAL_STEPS, budget, group_size)
    src_env = make_landscape_env(optimum=pair[0], noise=noise, group_size=group_size, steps_per_round=spr)
    src = GRPO(src_env, seed=seed)
    src_env.reset(seed=seed)
    src.run(budget)
    saved = src.export_state(Path("."))
    out: dict[str, Any] = {"pair": list(pair), "noise": noise, "seed": seed}
    for mode in ("cold", "warm"):
        env = make_landscape_env(optimum=pair[1], noise=noise, group_size=group_size, steps_per_round=spr)
        ctrl = GRPO(env, seed=seed + 10_000)  # not the source run's probes
        if mode == "warm":
            ctrl.warm_start(saved, Path("."))
        env.reset(seed=seed + 10_000)
        reached: list[int] = []

        def cb(c, env=env, reached=reached) -> None:
            if not reached and env.task.landscape.distance(env.current, env.progress) <= SUCCESS:
                reached.append(env.probes)

        learned = ctrl.run(budget, cb)
        out[mode] = {"probes_to_target": reached[0] if reached else None,
                     "distance": env.task.landscape.distance(learned, 1.0)}
    return out


# ------------------------------------------------------------------ summaries ------
def _q(x: list[float]) -> tuple[float, float, float]:
    a = np.asarray(x, dtype=np.float64)
    return float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75))


def time_vs_grpo(runs: list[dict[str, Any]], controller: str) -> float | None:
    """Total wall time of ``controller``'s runs over grpo's, or None unless all of both ran in one
    process (one part): times from parts run at different moments of a shared machine do not compare."""
    mine = [r for r in runs if r["controller"] == controller]
    grpo = [r for r in runs if r["controller"] == "grpo"]
    processes = {r.get("process") for r in mine + grpo}
    ref = sum(r["wall_s"] for r in grpo)
    if not mine or not ref or len(processes) != 1 or None in processes:
        return None
    return sum(r["wall_s"] for r in mine) / ref


def summarise(runs: list[dict[str, Any]], controllers: list[str], scenarios: list[str]) -> list[dict[str, Any]]:
    times = {c: time_vs_grpo(runs, c) for c in controllers}
    rows = []
    for s in scenarios:
        for c in controllers:
            rs = [r for r in runs if r["controller"] == c and r["scenario"] == s]
            if not rs:
                continue
            dist = [r["distance"] for r in rs]
            d, tr = _q(dist), _q([r["true_reward"] for r in rs])
            rows.append({
                "scenario": s, "controller": c, "n": len(rs),
                "dist_median": d[0], "dist_q25": d[1], "dist_q75": d[2],
                "dist_p90": float(np.percentile(dist, 90)),
                "trapped": float(np.mean([x > TRAPPED for x in dist])),
                "reward_median": tr[0], "reward_q25": tr[1], "reward_q75": tr[2],
                "best_probe_median": float(np.median([r["best_probe_distance"] for r in rs
                                                      if r.get("best_probe_distance") is not None] or [np.nan])),
                "updates_median": float(np.median([r.get("updates", 0) for r in rs])),
                "probes_median": float(np.median([r["probes"] for r in rs])),
                "probes_max": int(max(r["probes"] for r in rs)),
                "success": float(np.mean([x <= SUCCESS for x in dist])),
                "time_vs_grpo": times[c],
            })
    return rows


def overall(runs: list[dict[str, Any]], controllers: list[str]) -> list[dict[str, Any]]:
    out = []
    for c in controllers:
        rs = [r for r in runs if r["controller"] == c]
        if rs:
            dist = [r["distance"] for r in rs]
            d = _q(dist)
            out.append({"controller": c, "runs": len(rs), "dist_median": d[0], "dist_q25": d[1], "dist_q75": d[2],
                        "dist_p90": float(np.percentile(dist, 90)),
                        "trapped": float(np.mean([x > TRAPPED for x in dist])),
                        "success": float(np.mean([x <= SUCCESS for x in dist])),
                        "updates_median": float(np.median([r.get("updates", 0) for r in rs])),
                        "time_vs_grpo": time_vs_grpo(runs, c)})
    return out


def targets(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, scenario by scenario: GRPO against random search, PPO against its start."""
    by = {(r["scenario"], r["controller"]): r for r in rows}
    scen = {s.name: s for s in SCENARIOS}
    out = []
    for (name, ctrl), g in by.items():
        if ctrl != "grpo" or (name, "random") not in by:
            continue
        r = by[(name, "random")]
        s = scen.get(name)
        checks = {
            "trapped <= 5%": g["trapped"] <= 0.05,
            "trapped <= random's": g["trapped"] <= r["trapped"],
            "median <= random's": g["dist_median"] <= r["dist_median"],
        }
        if s is not None and s.single_peak and s.noise == 0.01:
            checks["median <= 0.015"] = g["dist_median"] <= 0.015
        out.append({"scenario": name, "grpo_median": g["dist_median"], "random_median": r["dist_median"],
                    "grpo_trapped": g["trapped"], "random_trapped": r["trapped"], "checks": checks})
    return out


def ppo_pinned(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How often PPO ends at its start value (within 0.01) where the optimum is elsewhere."""
    rs = [r for r in runs if r["controller"] == "ppo" and len(r["learned"]) == 1
          and abs(r["optimum_end"][0] - START) > 0.05]
    if not rs:
        return None
    return {"runs": len(rs), "pinned": float(np.mean([abs(r["learned"][0] - START) <= 0.01 for r in rs])),
            "updates_median": float(np.median([r["updates"] for r in rs])),
            "dist_median": float(np.median([r["distance"] for r in rs]))}


def regulariser_effect(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Paired runs (same scenario and seed): does lambda_reg change the learned value?"""
    base = {(r["scenario"], r["seed"]): r for r in runs if r["controller"] == "grpo"}
    off = {(r["scenario"], r["seed"]): r for r in runs if r["controller"] == "grpo[lambda_reg=0]"}
    keys = sorted(set(base) & set(off))
    if not keys:
        return None
    diff = [max(abs(a - b) for a, b in zip(base[k]["learned"], off[k]["learned"])) for k in keys]
    return {"pairs": len(keys), "differ_by_more_than_0.002": float(np.mean([d > 0.002 for d in diff])),
            "median_abs_difference": float(np.median(diff))}


def warm_summary(warm: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for pair in sorted({tuple(w["pair"]) for w in warm}):
        for noise in sorted({w["noise"] for w in warm}):
            ws = [w for w in warm if tuple(w["pair"]) == pair and w["noise"] == noise]
            if not ws:
                continue
            row: dict[str, Any] = {"pair": list(pair), "noise": noise, "n": len(ws)}
            for mode in ("cold", "warm"):
                probes = [w[mode]["probes_to_target"] for w in ws]
                # a run that never got within reach counts as needing more than the budget
                as_num = [np.inf if p is None else p for p in probes]
                row[f"{mode}_probes_median"] = float(np.median(as_num))
                row[f"{mode}_reached"] = float(np.mean([p is not None for p in probes]))
                row[f"{mode}_dist_median"] = float(np.median([w[mode]["distance"] for w in ws]))
            row["warm_faster"] = float(np.mean([
                (w["warm"]["probes_to_target"] or np.inf) < (w["cold"]["probes_to_target"] or np.inf) for w in ws]))
            out.append(row)
    return out


def parse_seeds(text: str) -> list[int]:
    """:func:`benchmarks.seeds.parse_seeds` (``"30"``: seeds 0-29; ``"10-19"``; ``"1,5,9"``), exiting in one
    line for a bad value."""
    from benchmarks.seeds import parse_seeds as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise SystemExit(f"controllers.py: error: {exc}") from None


def build_doc(meta: dict[str, Any], runs: list[dict[str, Any]], warm: list[dict[str, Any]]) -> dict[str, Any]:
    controllers = list(dict.fromkeys(r["controller"] for r in runs))
    order = {c: i for i, c in enumerate(CONTROLLERS)}
    controllers.sort(key=lambda c: (order.get(c, len(order)), c))
    known = [s.name for s in SCENARIOS]
    scenarios = [s for s in known if any(r["scenario"] == s for r in runs)]
    rows = summarise(runs, controllers, scenarios)
    return {**meta, "controllers": controllers, "scenario_names": scenarios, "summary": rows,
            "overall": overall(runs, controllers), "targets": targets(rows, runs), "ppo_pinned": ppo_pinned(runs),
            "regulariser": regulariser_effect(runs), "warm_summary": warm_summary(warm), "warm_runs": warm,
            "runs": runs}


def part_name(command: str) -> str | None:
    """The ``--part NAME`` of a command line, None without one."""
    words = command.split()
    return words[words.index("--part") + 1] if "--part" in words[:-1] else None


def merge(out: Path, command: str) -> int:
    """Combine the parts under ``out/parts`` into the results. Runs of an existing
    ``controllers.json`` that no part re-ran are kept (a part that re-runs some controllers
    replaces only their runs), and the commands that made them stay listed."""
    parts = sorted((out / "parts").glob("controllers-*.json"))
    if not parts:
        raise SystemExit(f"controllers.py: error: no parts in {out / 'parts'} to merge")
    runs: dict[tuple, dict[str, Any]] = {}
    warm: dict[tuple, dict[str, Any]] = {}
    metas = []
    earlier: list[str] = []
    previous = out / "controllers.json"
    if previous.is_file():
        doc = json.loads(previous.read_text())
        gone = {f"grpo[{a}]" for a in REMOVED_ABLATIONS}
        for r in unpack_runs(doc["runs"]):
            if r["controller"] not in gone:  # a removed setting's runs cannot be re-run: they go
                runs[(r["controller"], r["scenario"], r["seed"])] = r
        for w in doc.get("warm_runs", []):
            warm[(tuple(w["pair"]), w["noise"], w["seed"])] = w
        earlier = [c for c in doc.get("commands") or [doc["command"]] if "--merge" not in c.split()]
        metas.append({**doc, "command": None})
    for p in parts:
        doc = json.loads(p.read_text())
        metas.append(doc)
        for r in unpack_runs(doc["runs"]):
            runs[(r["controller"], r["scenario"], r["seed"])] = {**r, "process": r.get("process") or p.stem}
        for w in doc.get("warm_runs", []):
            warm[(tuple(w["pair"]), w["noise"], w["seed"])] = w
    first = metas[0]
    for m in metas[1:]:
        if (m["budget"], m["group_size"]) != (first["budget"], first["group_size"]):
            raise SystemExit(f"controllers.py: error: parts differ in budget/group size ({m['command']})")
    new = [m["command"] for m in metas if m["command"] is not None]
    rerun = {part_name(c) for c in new} - {None}  # a part run again replaces its earlier command
    earlier = [c for c in earlier if c not in new and part_name(c) not in rerun]
    meta = {"command": command, "commands": earlier + new + [command],
            "seeds": sorted({s for m in metas for s in m["seeds"]}), "budget": first["budget"],
            "group_size": first["group_size"], "scenarios": first["scenarios"],
            "torch_threads": first["torch_threads"], "versions": first["versions"], "success_threshold": SUCCESS,
            "trapped_threshold": TRAPPED, "parts": [p.name for p in parts]}
    doc = build_doc(meta, list(runs.values()), list(warm.values()))
    print_tables(doc["summary"], doc["overall"], f"controllers, budget {meta['budget']}")
    write(doc, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="10", help="N (seeds 0..N-1), A-B, or a comma list")
    p.add_argument("--budget", type=int, default=64, help="probes per run")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--controllers", default=",".join(CONTROLLERS))
    p.add_argument("--scenarios", default="", help="only scenarios whose name contains one of these (comma list)")
    p.add_argument("--landscapes", default="", help="only these landscapes (names or prefixes, comma list)")
    p.add_argument("--noise", default="", help="only these noise levels (comma list of 0.01, 0.05, 0.1)")
    p.add_argument("--ablations", action="store_true", help="add GRPO with each design choice switched back")
    p.add_argument("--warm-start", action="store_true", help="add the GRPO warm-start experiment")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny MLPs: 1 is fastest)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--part", default=None, help="write parts/controllers-PART.json under --out (merge later)")
    p.add_argument("--merge", action="store_true", help="combine --out/parts/*.json into the results")
    args = p.parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0] if argv is None else
                                                             "benchmarks/controllers.py", *(argv or sys.argv[1:])])
    out = Path(args.out)
    if args.merge:
        return merge(out, command)

    import torch

    torch.set_num_threads(args.threads)
    controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    for c in controllers:  # fail early on a typo
        cls = get_controller(c.partition("[")[0])
        try:
            cls.make_config(variant_settings(c))
        except ConfigError as exc:
            raise SystemExit(f"controllers.py: error: {c!r}: {exc}") from None
    if args.ablations:
        controllers += [f"grpo[{a}]" for a in ABLATIONS]
    seeds = parse_seeds(args.seeds)
    wanted = [w.strip() for w in args.scenarios.split(",") if w.strip()]
    lands = [w.strip() for w in args.landscapes.split(",") if w.strip()]
    try:
        noises = [float(x) for x in args.noise.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"controllers.py: error: --noise takes numbers, got {args.noise!r}") from None
    scenarios = [s for s in SCENARIOS
                 if (not wanted or any(w in s.name for w in wanted))
                 and (not lands or any(s.landscape.startswith(w) for w in lands))
                 and (not noises or any(abs(s.noise - n) < 1e-12 for n in noises))]
    if not scenarios:
        raise SystemExit("controllers.py: error: no scenario matches --scenarios/--landscapes/--noise")
    runs: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for s in scenarios:
        for c in controllers:
            for seed in seeds:
                runs.append({**run_one(c, s, seed, args.budget, args.group_size), "process": args.part or "main"})
        print(f"  {s.name}: done ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr, flush=True)
    warm: list[dict[str, Any]] = []
    if args.warm_start:
        for noise in sorted({s.noise for s in scenarios}):
            for pair in WARM_PAIRS:
                warm += [warm_start_one(pair, noise, seed, args.budget, args.group_size) for seed in seeds]
        print(f"  warm start: done ({time.perf_counter() - t_all:.0f} s)", file=sys.stderr, flush=True)
    meta = {"command": command, "seeds": seeds, "budget": args.budget, "group_size": args.group_size,
            "scenarios": [{"name": s.name, **{k: (list(v) if isinstance(v, tuple) else v)
                                              for k, v in s.kwargs.items()},
                           **({"start": s.start} if s.start != START else {})} for s in scenarios],
            "torch_threads": args.threads, "versions": versions(), "success_threshold": SUCCESS,
            "trapped_threshold": TRAPPED}
    if args.part:
        path = out / "parts" / f"controllers-{args.part}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps({**meta, "runs": runs, "warm_runs": warm}))
        print(f"wrote {path}", file=sys.stderr)
        return 0
    doc = build_doc(meta, runs, warm)
    print_tables(doc["summary"], doc["overall"], f"controllers, budget {args.budget}, {len(seeds)} seeds")
    write(doc, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
