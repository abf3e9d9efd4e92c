"""``--engine ray`` against ``--engine local``: wall time and identical results (issue 14).

Each part runs the same ``hpctl`` command line with ``--engine local`` and with
``--engine ray`` (a local Ray instance on this machine's cores: one worker per core, each
task or actor reserving one CPU), side by side in alternating order (local, ray, then ray,
local, ...), as whole processes (Python start-up, Ray start-up, MLflow, plots included).
The ratio is local wall time / Ray wall time per pair; the summary quotes the median pair.
Every pair's results are compared: learned values, test metrics and every probe's
(value, score) must be identical (synthetic), or the same grid point chosen with scores
equal up to float rounding (grasp_lora, whose Ray workers run torch with one thread each).

Parts:

* ``compare``: ``hpctl compare synthetic --controllers grpo,random --seeds 4
  --probe-delay 0.5 ...``: 8 trials of about 64 probes of 0.5 s each; with Ray, two
  trials at a time.
* ``grid``: ``hpctl run grasp_lora --preset smoke -c grid --baseline none``: 8 grid points,
  each a full (tiny) fine-tune; with Ray, on two workers that each load the backbone once.
  ``--steps N`` lengthens every fine-tune (the smoke preset's is 7 steps).

The load average before and after each command is recorded: the machine may be shared.

    python benchmarks/ray_scaleout.py --part compare [--pairs 2]
    python benchmarks/ray_scaleout.py --part grid [--pairs 1] [--steps 28]

Writes ``benchmarks/results/ray_scaleout_<part>.json`` and ``ray_scaleout.md`` (one section
per part, rewritten from the JSON files present).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

COMPARE = ["compare", "synthetic", "--controllers", "grpo,random", "--seeds", "4", "--budget", "64",
           "--group-size", "8", "--probe-delay", "0.5", "--noise", "0.05", "--optimum", "0.3", "--seed", "0"]
GRID = ["run", "grasp_lora", "--preset", "smoke", "-c", "grid", "--baseline", "none", "--seed", "0"]


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _timed(args: list[str], out: Path, env: dict[str, str]) -> dict:
    """One whole ``hpctl`` process; its wall seconds, the load around it, its JSON result."""
    before = _load()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hpctl.cli", *args, "--out", str(out), "--json"], env=env,
                          capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return {"wall_s": wall, "load_before": before, "load_after": _load(),
            "result": json.loads(proc.stdout.strip().splitlines()[-1])}


def _probes(run_dir: Path) -> list[tuple]:
    hist = json.loads((run_dir / "history.json").read_text())
    return [(e["kind"], e["probe"], tuple(e["value"]), e["score"]) for e in hist if e["event"] == "probe"]


def _same_compare(a: dict, b: dict) -> dict:
    ra, rb = a["result"], b["result"]
    runs_same = all([(r["seed"], r["learned"], r["metrics"], r["probes"]) for r in ra["runs"][c]]
                    == [(r["seed"], r["learned"], r["metrics"], r["probes"]) for r in rb["runs"][c]]
                    for c in ra["runs"])
    probes_same, n = True, 0
    for c, runs in ra["runs"].items():
        for r in runs:
            pa = _probes(Path(ra["out_dir"]) / f"{c}-s{r['seed']}")
            pb = _probes(Path(rb["out_dir"]) / f"{c}-s{r['seed']}")
            probes_same &= pa == pb
            n += len(pa)
    return {"identical": bool(runs_same and probes_same and not ra["failures"] and not rb["failures"]),
            "learned_and_metrics_identical": runs_same, "probe_sequences_identical": probes_same,
            "probes_compared": n, "trials": sum(len(v) for v in ra["runs"].values())}


def _same_grid(a: dict, b: dict) -> dict:
    ra, rb = a["result"], b["result"]
    pa, pb = _probes(Path(ra["out_dir"])), _probes(Path(rb["out_dir"]))
    rel = max(abs(x[3] - y[3]) / max(abs(x[3]), 1e-12) for x, y in zip(pa, pb))
    return {"same_point": ra["learned"] == rb["learned"] and [p[:3] for p in pa] == [p[:3] for p in pb],
            "learned": ra["learned"], "points": len(pa), "max_rel_score_diff": rel,
            "bitwise_equal_scores": sum(x[3] == y[3] for x, y in zip(pa, pb)),
            "test_metric_diff": {k: rb["metrics"][k] - v for k, v in ra["metrics"].items()
                                 if isinstance(v, (int, float)) and k in rb["metrics"]}}


def measure(part: str, pairs: int, steps: int | None, local_threads: int | None = None) -> dict:
    args = list(COMPARE if part == "compare" else GRID)
    if steps is not None:
        args += ["--steps", str(steps)]
    tmp = Path(tempfile.mkdtemp(prefix=f"ray_scaleout_{part}_"))
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}")
    envs = {"ray": env, "local": env if local_threads is None else
            dict(env, OMP_NUM_THREADS=str(local_threads), MKL_NUM_THREADS=str(local_threads))}
    record = {"part": part, "command": "hpctl " + " ".join(args) + " --engine local|ray", "cores": os.cpu_count(),
              "uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), "pairs": []}
    for i in range(pairs):
        order = ["local", "ray"] if i % 2 == 0 else ["ray", "local"]
        got = {eng: _timed([*args, "--engine", eng], tmp / f"{eng}-{i}", envs[eng]) for eng in order}
        loc, ray = got["local"], got["ray"]
        same = _same_compare(loc, ray) if part == "compare" else _same_grid(loc, ray)
        pair = {"order": order, "local_wall_s": loc["wall_s"], "ray_wall_s": ray["wall_s"],
                "ratio": loc["wall_s"] / ray["wall_s"], "load": {e: [got[e]["load_before"], got[e]["load_after"]]
                                                                 for e in order}, **same}
        if part == "grid":
            for eng, r in (("local", loc), ("ray", ray)):
                ph = r["result"]["phases"]
                pair[f"{eng}_grid_phase_s"] = ph["controller_s"]
                pair[f"{eng}_grid_compute_s"] = sum(v for k, v in ph.items()
                                                    if k in ("train_s", "grid_dev_eval_s", "workers_train_s",
                                                             "workers_grid_dev_eval_s"))
            pair["grid_phase_ratio"] = pair["local_grid_phase_s"] / pair["ray_grid_phase_s"]
        record["pairs"].append(pair)
        print(json.dumps({k: v for k, v in pair.items() if k != "test_metric_diff"}), flush=True)
    record["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    record["median_ratio"] = statistics.median(p["ratio"] for p in record["pairs"])
    if part == "grid":
        record["median_grid_phase_ratio"] = statistics.median(p["grid_phase_ratio"] for p in record["pairs"])
    record["all_identical"] = all(p.get("identical", p.get("same_point")) for p in record["pairs"])
    return record


def _md_section(rec: dict) -> str:
    extra = [f"--steps {rec['steps']}"] if rec.get("steps") else []
    if rec.get("local_threads"):
        extra.append(f"local run with OMP_NUM_THREADS={rec['local_threads']}")
    lines = [f"## {rec['part']}{' (' + ', '.join(extra) + ')' if extra else ''}", "",
             f"`{rec['command']}`", "",
             f"{rec['cores']} cores; `uptime` before: `{rec['uptime_start']}`; after: `{rec['uptime_end']}`", ""]
    if rec["part"] == "compare":
        lines += ["| pair | order | local s | ray s | local/ray | identical (learned, metrics, every probe) | load 1-min (before, after) |",
                  "|---|---|---|---|---|---|---|"]
        for i, p in enumerate(rec["pairs"]):
            lines.append(f"| {i} | {' then '.join(p['order'])} | {p['local_wall_s']:.1f} | {p['ray_wall_s']:.1f} | "
                         f"{p['ratio']:.2f}x | {p['identical']} ({p['probes_compared']} probes, {p['trials']} trials) | "
                         + ", ".join(f"{e} {p['load'][e][0][0]}->{p['load'][e][1][0]}" for e in p["order"]) + " |")
        lines += ["", f"Median local/ray wall-time ratio: **{rec['median_ratio']:.2f}x** "
                      f"(2 Ray workers); results identical in every pair: **{rec['all_identical']}**."]
    else:
        lines += ["| pair | order | local s | ray s | local/ray | grid phase local s | ray s | ratio | grid compute s local / ray workers | same point | max rel. score diff | load 1-min (before, after) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for i, p in enumerate(rec["pairs"]):
            lines.append(f"| {i} | {' then '.join(p['order'])} | {p['local_wall_s']:.1f} | {p['ray_wall_s']:.1f} | "
                         f"{p['ratio']:.2f}x | {p['local_grid_phase_s']:.1f} | {p['ray_grid_phase_s']:.1f} | "
                         f"{p['grid_phase_ratio']:.2f}x | {p['local_grid_compute_s']:.1f} / {p['ray_grid_compute_s']:.1f} | "
                         f"{p['same_point']} ({p['learned']}) | {p['max_rel_score_diff']:.1e} | "
                         + ", ".join(f"{e} {p['load'][e][0][0]}->{p['load'][e][1][0]}" for e in p["order"]) + " |")
        lines += ["", f"Median end-to-end ratio **{rec['median_ratio']:.2f}x**, grid phase "
                      f"**{rec['median_grid_phase_ratio']:.2f}x**; same grid point in every pair: "
                      f"**{rec['all_identical']}**."]
    return "\n".join(lines) + "\n"


def write_md() -> None:
    (RESULTS / "ray_scaleout.md").write_text(render_md(RESULTS))


def render_md(results: Path = RESULTS) -> str:
    """ray_scaleout.md from the parts' JSON files in ``results`` (benchmarks/pages.py regenerates it)."""
    parts = []
    for f in sorted(results.glob("ray_scaleout_*.json")):
        parts.append(_md_section(json.loads(f.read_text())))
    head = ("# `--engine ray` vs `--engine local` on this machine\n\n"
            "Written by `benchmarks/ray_scaleout.py` (see its docstring for what is measured); whole "
            "`hpctl` processes, Ray start-up included, in alternating order. A Ray worker runs torch "
            "with one thread (its one reserved CPU), the local run with torch's default (one per core) "
            "unless the section says otherwise: the grid rows with and without `OMP_NUM_THREADS=1` for "
            "the local run separate what the thread count does from what running two workers does.\n\n")
    return head + "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("compare", "grid"), required=True)
    ap.add_argument("--pairs", type=int, default=1, help="local/ray pairs to run (alternating order)")
    ap.add_argument("--steps", type=int, default=None, help="grid: steps of every fine-tune (smoke preset: 7)")
    ap.add_argument("--local-threads", type=int, default=None,
                    help="OMP_NUM_THREADS for the local run (a Ray worker gets its CPU count: 1)")
    args = ap.parse_args()
    if args.pairs < 1:
        raise SystemExit("--pairs must be >= 1")
    rec = measure(args.part, args.pairs, args.steps, args.local_threads)
    rec["steps"], rec["local_threads"] = args.steps, args.local_threads
    name = args.part + ("" if args.steps is None else f"_steps{args.steps}") + \
        ("" if args.local_threads is None else f"_local{args.local_threads}thread")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"ray_scaleout_{name}.json").write_text(json.dumps(rec, indent=2, default=str) + "\n")
    write_md()
    print(f"median ratio {rec['median_ratio']:.2f}x; identical: {rec['all_identical']}")


if __name__ == "__main__":
    main()
