"""Levers on what GRASP's probes see, screened against the regret scale's grid curves (issue 12).

At the regret scale (``benchmarks/results/grasp_vs_grid_regret_{ar,zh}.md``) GRPO learned 0.78-0.87
in five of six parts while the grid's 64-step fine-tunes preferred 0.0-0.64: the micro-dev probes of
the controller run's early states (steps 0-12 of 16) favour the most pruned ratio whatever the grid
prefers. A lever that fixes this must change what the probes measure and leave the final
fine-tune alone, so the committed grid curves still score it.

Per part (a language and seed of the committed regret results) and lever (plugin options set on
top of that part's GRPO arm), this runs only the GRPO controller run, on the part's shared
adapters (retrained, same seed, when their folder is gone), and reports where the learned ratio
lands on the grid's trend (:func:`benchmarks.grasp_vs_grid.analysis.curve_roughness`: the quadratic
through the grid points; ``trend regret`` = its value at the learned ratio minus its minimum, over its
range), the raw-regret pass rate a controller landing there would have against a re-run grid, and
the probe rounds (:func:`~benchmarks.grasp_vs_grid.analysis.probe_rounds`: Spearman of micro-dev score
against ratio per training state). No final fine-tune runs: a lever that passes here then needs the
regret scale's GRPO arm re-run for its raw regret and time ratio. Cost is counted in optimizer steps
of the controller run (deterministic), never in seconds.

    python -m benchmarks.probe_levers --parts ar:0,ar:1,ar:2,zh:0,zh:1,zh:2 --lever none
    python -m benchmarks.probe_levers --parts zh:1,ar:0 --lever warmup_steps=16,controller_steps=32 --tag w16
    python -m benchmarks.probe_levers --scale regret32 --parts zh:1 --lever micro_dev=48 --tag r32-microdev48

``--scale regret32`` screens a part of issue 36's 32-step results, read on its language's
seed-averaged grid curve (:func:`yardstick`).

``--lever none`` re-runs each part's committed GRPO arm (it must learn the committed ratio: a check
that the screen reproduces the benchmark). Results accumulate in ``<out>/probe_levers.json`` (one
entry per lever tag and part; a re-run replaces its entry) and ``<out>/probe_levers.md`` is rewritten
from all of them; ``--report-only`` only rewrites the markdown.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.grasp_vs_grid import analysis  # noqa: E402
from hpctl.errors import HpctlError  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = analysis.TARGET_REGRET_FRACTION


def parse_lever(text: str) -> dict[str, Any]:
    """``"none"`` or ``key=value,...`` of grasp_lora options (numbers parsed)."""
    if text.strip() in ("", "none"):
        return {}
    out: dict[str, Any] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise SystemExit(f"probe_levers.py: error: --lever {text!r}: give key=value pairs joined by ','")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


def parse_parts(text: str) -> list[tuple[str, int]]:
    parts = []
    for item in text.split(","):
        lang, _, seed = item.partition(":")
        if lang not in ("ar", "zh") or not seed.isdigit():
            raise SystemExit(f"probe_levers.py: error: part {item!r}: give LANG:SEED, LANG ar or zh")
        parts.append((lang, int(seed)))
    return parts


#: the regret scales a lever can be screened on: "regret" reads a part on its own 64-step grid curve,
#: "regret32" on its language's seed-averaged 32-step grid curve (:func:`yardstick`)
SCALES = ("regret", "regret32")


def scale_of(entry: dict[str, Any]) -> str:
    """An entry's scale (entries screened before ``--scale`` existed are the regret scale's)."""
    return entry.get("scale", "regret")


def committed(lang: str, results: Path = RESULTS, scale: str = "regret") -> dict[str, Any]:
    path = results / f"grasp_vs_grid_{scale}_{lang}.json"
    if not path.is_file():
        raise SystemExit(f"probe_levers.py: error: {path} is missing (run the {scale} scale first)")
    return json.loads(path.read_text())


def yardstick(data: dict[str, Any], seed: int, scale: str = "regret") -> list[tuple[float, float]] | None:
    """The grid curve a learned ratio is read on: the part's own at the regret scale; at regret32 (issue
    36) the mean of every seed's grid curve in the file (:func:`analysis.mean_curve`)."""
    if scale == "regret32":
        curves = {int(s): analysis.grid_loss_curve(arms["grid"]) for s, arms in data["runs"].items() if "grid" in arms}
        return analysis.mean_curve({s: c for s, c in curves.items() if c})
    return analysis.grid_loss_curve(data["runs"][str(seed)]["grid"])


def shared_adapters(data: dict[str, Any], seed: int, work: Path) -> tuple[str, str]:
    """The part's source and target adapter folders, retrained with the part's settings when gone."""
    rec = data["adapters"][str(seed)]
    if Path(rec["source_adapter"]).is_dir() and Path(rec["target_adapter"]).is_dir():
        return rec["source_adapter"], rec["target_adapter"]
    from benchmarks.grasp_vs_grid.arms import train_shared_adapters

    base = {k: v for k, v in data["arm_specs"]["grpo"]["plugin_config"].items()
            if k not in ("source_adapter", "target_adapter")}
    out = work / f"adapters_{data['lang']}{seed}"
    new = train_shared_adapters(base, seed, out, f"sqlite:///{work / 'mlflow.db'}", None)
    return new["source_adapter"], new["target_adapter"]


def screen(lang: str, seed: int, lever: dict[str, Any], work: Path, results: Path = RESULTS,
           scale: str = "regret") -> dict[str, Any]:
    """One part's GRPO controller run with ``lever`` set; where its learned ratio lands on the grid's trend."""
    from benchmarks.grasp_vs_grid.arms import probe_entry
    from hpctl.rundir import RunOptions, RunSpec
    from hpctl.runner import build, configure

    data = committed(lang, results, scale)
    run = data["runs"][str(seed)]
    spec_d = copy.deepcopy(data["arm_specs"]["grpo"])
    opts = RunOptions(**{**spec_d["options"], "seed": seed, "out": None, "tracking_uri": None})
    configure(RunSpec(plugin="grasp_lora", options=opts, plugin_config={**spec_d["plugin_config"], **lever}))
    src, tgt = shared_adapters(data, seed, work)  # after the lever's options are checked
    pc = {**spec_d["plugin_config"], "source_adapter": src, "target_adapter": tgt, **lever}
    spec = RunSpec(plugin="grasp_lora", options=opts, plugin_config=pc)
    out = Path(tempfile.mkdtemp(prefix=f"lever_{lang}{seed}_", dir=work))
    _, _, task, env, ctrl, budget = build(spec, out)
    trace: list[dict[str, Any]] = []
    env.listeners.append(lambda e: trace.append(probe_entry(e)) if e["event"] == "probe" else None)
    try:
        t0 = time.perf_counter()
        env.reset(seed=seed)
        learned = float(task.knob.validate(ctrl.run(budget))[0])
        wall = time.perf_counter() - t0
        steps = int(env.steps_done)
    finally:
        task.close()
    curve = yardstick(data, seed, scale)
    trend = analysis.curve_roughness(curve, learned)
    before = analysis.curve_roughness(curve, float(run["grpo"]["learned"]["prune_ratio"]))
    return {"lang": lang, "seed": seed, "scale": scale, "lever": lever, "learned": learned,
            "committed_learned": float(run["grpo"]["learned"]["prune_ratio"]),
            "trend_regret": float(trend["smoothed_fraction"]), "committed_trend_regret": float(before["smoothed_fraction"]),
            "learned_pass_rate": float(trend["learned_pass_rate"]), "oracle_ratio": float(trend["oracle_ratio"]),
            "oracle_pass_rate": float(trend["oracle_pass_rate"]),
            "controller_steps": steps, "committed_controller_steps": int(data["controller_steps"]),
            "warmup_steps": int(env.warmup_steps), "steps_per_round": int(env.steps_per_round),
            "probes": int(env.probes), "rounds": analysis.probe_rounds(trace), "probe_trace": trace,
            "controller_state": ctrl.state(), "wall_s": wall}


def tag_of(lever: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in lever.items()) or "none"


def report(entries: list[dict[str, Any]]) -> str:
    """Markdown: one table row per (lever, part), then per lever the summary over its parts."""
    lines = ["# Probe levers at the regret scales (issues 12 and 36)", "",
             "Each row: one part's (language, seed) GRPO controller run with the lever's options set on top of "
             "the regret scale's GRPO arm, on the part's shared adapters; no final fine-tune. Trend regret = the "
             "grid trend's value at the learned ratio minus its minimum, over its range (target "
             f"{TARGET:.0%}); pass rate = how often a controller landing there would meet the raw-regret target "
             "against a re-run grid (the perfect controller's rate beside it). Probes: Spearman of micro-dev "
             "score against ratio per probe round (+1: every more pruned ratio scored better). Steps = "
             "controller-run optimizer steps (warm-up included; + the look-ahead probes' training steps) against the "
             "committed run's. Parts marked 32-step are read on their language's seed-averaged 32-step grid "
             "curve (issue 36's yardstick), the others on their own 64-step grid curve.", "",
             "Commands: " + " ; ".join(sorted({f"`{e['command']}`" for e in entries})), "",
             "| lever | part | learned (committed) | trend regret (committed) | pass rate (perfect) | steps | "
             "probe rounds: step Spearman |", "|---|---|---|---|---|---|---|"]
    order = sorted(entries, key=lambda e: (e["tag"] != "none", e["tag"], e["lang"], e["seed"]))
    for e in order:
        rounds = " ".join(f"{r['step']}:{r['spearman']:+.2f}" for r in e["rounds"] or [])
        part = f"{e['lang']} {e['seed']}" + (" 32-step" if scale_of(e) == "regret32" else "")
        lines.append(f"| {e['tag']} | {part} | {e['learned']:.3f} ({e['committed_learned']:.3f}) | "
                     f"{e['trend_regret']:.0%} ({e['committed_trend_regret']:.0%}) | "
                     f"{e['learned_pass_rate']:.0%} ({e['oracle_pass_rate']:.0%}) | "
                     f"{steps_text(e)} ({e['committed_controller_steps']}) | {rounds} |")
    lines += ["", "## Per lever", "",
              "| lever | parts | trend regret median | worst | within target | committed: median, within |",
              "|---|---|---|---|---|---|"]
    for tag, scale in sorted({(e["tag"], scale_of(e)) for e in entries},
                             key=lambda t: (t[1], t[0] != "none", t[0])):
        m = lever_summary(entries, tag, scale)
        name = tag + (" (32-step)" if scale == "regret32" else "")
        lines.append(f"| {name} | {m['parts']} | {m['median']:.0%} | {m['worst']:.0%} | {m['within']} of {m['parts']} | "
                     f"{m['committed_median']:.0%}, {m['committed_within']} of {m['parts']} |")
    return "\n".join(lines) + "\n"


def steps_text(e: dict[str, Any]) -> str:
    """Controller-run steps, and the look-ahead probes' training steps (the regret arms probe with none)."""
    probe = int(e["lever"].get("probe_steps", 0)) * int(e["probes"])
    return f"{e['controller_steps']} + {probe}" if probe else str(e["controller_steps"])


def lever_summary(entries: list[dict[str, Any]], tag: str, scale: str = "regret") -> dict[str, Any]:
    """One lever over its parts: trend regret median, worst, parts within the target (and the committed
    runs' on the same parts), the learned ratios' range and the probe rounds' Spearman range."""
    es = [e for e in entries if e["tag"] == tag and scale_of(e) == scale]
    tr = [e["trend_regret"] for e in es]
    cr = [e["committed_trend_regret"] for e in es]
    rho = [r["spearman"] for e in es for r in e["rounds"] or [] if np.isfinite(r["spearman"])]
    return {"parts": len(es), "median": float(np.median(tr)), "worst": float(max(tr)),
            "within": sum(t <= TARGET for t in tr), "committed_median": float(np.median(cr)),
            "committed_within": sum(t <= TARGET for t in cr), "learned_min": min(e["learned"] for e in es),
            "learned_max": max(e["learned"] for e in es),
            "rho_min": min(rho, default=float("nan")), "rho_max": max(rho, default=float("nan"))}


def load(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["entries"] if path.is_file() else []


def save(path: Path, entries: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "probe_levers", "entries": entries}, indent=1) + "\n")
    path.with_suffix(".md").write_text(report(entries))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="ar:0,ar:1,ar:2,zh:0,zh:1,zh:2", help="LANG:SEED,... of the regret scale")
    ap.add_argument("--lever", default="none", help="grasp_lora options key=value,... (none: the committed arm)")
    ap.add_argument("--tag", default=None, help="name of the lever in the results (default: its options)")
    ap.add_argument("--out", default=str(RESULTS), help="folder of probe_levers.json / .md")
    ap.add_argument("--scale", default="regret", choices=SCALES,
                    help="the committed results a part comes from (grasp_vs_grid_SCALE_LANG.json) and its yardstick")
    ap.add_argument("--results", default=str(RESULTS), help="folder of the committed grasp_vs_grid_SCALE_*.json")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--report-only", action="store_true", help="only rewrite the markdown from the JSON")
    args = ap.parse_args(argv)
    path = Path(args.out) / "probe_levers.json"
    entries = load(path)
    if args.report_only:
        save(path, entries)
        return 0
    lever, parts = parse_lever(args.lever), parse_parts(args.parts)
    tag = args.tag or tag_of(lever)
    command = "python -m benchmarks.probe_levers " + " ".join(sys.argv[1:] if argv is None else argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="probe_levers_"))
    work.mkdir(parents=True, exist_ok=True)
    for lang, seed in parts:
        try:
            rec = screen(lang, seed, lever, work, Path(args.results), args.scale)
        except HpctlError as exc:  # a bad lever option: one line, the parts already screened are saved
            raise SystemExit(f"probe_levers.py: error: {exc}") from None
        rec.update(tag=tag, command=command)
        key = (tag, lang, seed, args.scale)
        entries = [e for e in entries if (e["tag"], e["lang"], e["seed"], scale_of(e)) != key] + [rec]
        save(path, entries)  # after every part: a long screen that is stopped keeps what it finished
        rounds = " ".join(f"{r['step']}:{r['spearman']:+.2f}" for r in rec["rounds"] or [])
        print(f"{tag} {lang} {seed}: learned {rec['learned']:.3f} (committed {rec['committed_learned']:.3f}), "
              f"trend regret {rec['trend_regret']:.0%} (committed {rec['committed_trend_regret']:.0%}), "
              f"probe rounds {rounds}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
