"""The regret scale's yardstick at two fine-tune lengths, and GRPO's committed ratios on each (issue 12).

The regret scale (``benchmarks/grasp_vs_grid``, ``--scale regret``) scores a learned ratio against a
grid of 64-step fine-tunes. Along those fine-tunes (the ratio landscape's ``--trajectory`` view,
Arabic seed 1) the dev loss after 32 steps was below that after 64 at every ratio: the 64-step
fine-tune overfits, and its grid measures how each ratio regularises an overfitting second half.
This report puts, per part (language, seed), the grid of 32-step fine-tunes beside the committed
64-step grid and reads the committed GRPO ratio off each one's trend (the quadratic through the grid
points, :func:`benchmarks.grasp_vs_grid.analysis.curve_roughness`). GRPO's controller run depends on
``controller_steps`` (16 at this scale), not on the fine-tune length, so its learned ratio is the
same against either grid; only the yardstick changes.

Inputs (committed, nothing is trained here):

- 64 steps: ``grasp_vs_grid_regret_{ar,zh}.json`` (the grid arm's points, GRPO's learned ratio);
- 32 steps: ``ratio_landscape_default_regret32.json`` (Arabic) and ``..._regret32_zh.json``
  (Chinese), ``python -m benchmarks.ratio_landscape --preset default --grid-only --dev 300`` with
  the regret scale's sizes and ``--set steps=32`` (the command is in each file); a part missing
  there is taken from a trajectory file (``..._regret_traj.json``: the same fine-tunes stopped at 32
  of 64 steps, bit for bit the 32-step grid, the learning rate being constant).

    python -m benchmarks.yardstick          # writes benchmarks/results/yardstick.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.grasp_vs_grid import analysis  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TARGET = analysis.TARGET_REGRET_FRACTION
SHORT, LONG, CONTROLLER = 32, 64, 16  # fine-tune steps of the two grids; the controller run's steps
#: options the two grids may differ in: the length compared, where the adapters came from
IGNORED = ("steps", "source_adapter", "target_adapter")
LANDSCAPES = {"ar": ("ratio_landscape_default_regret32.json", "ratio_landscape_default_regret_traj.json"),
              "zh": ("ratio_landscape_default_regret32_zh.json",)}


def short_curves(lang: str, results: Path = RESULTS) -> dict[int, dict[str, Any]]:
    """Per seed: the 32-step grid curve ``[(ratio, dev loss)]`` and the command that measured it."""
    out: dict[int, dict[str, Any]] = {}
    for name in LANDSCAPES[lang]:
        path = results / name
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        measured = doc["config"].get("lang", "ar")  # the default preset's language when the file names none
        if measured != lang:
            raise SystemExit(f"yardstick.py: error: {name} measured {measured!r}, not {lang!r}")
        for s in doc["seeds"]:
            seed = int(s["seed"])
            if seed in out:
                continue
            if int(s.get("fine_tune_steps", doc["config"].get("steps", 0))) == SHORT:
                losses = s.get("grid_dev_loss")
            else:
                traj = [t for t in s.get("trajectory") or [] if int(t["steps"]) == SHORT]
                losses = traj[0].get("dev_loss") if traj else None
            if not losses or not all(np.isfinite(losses)):
                continue  # no whole 32-step dev curve for this seed
            out[seed] = {"curve": list(zip(map(float, s["ratios"]), map(float, losses))), "source": name,
                         "command": s.get("command") or doc.get("command") or "(not recorded)",
                         "config": doc["config"]}
    return out


def part(lang: str, seed: int, run: dict[str, Any], short: dict[str, Any],
         grid_config: dict[str, Any]) -> dict[str, Any]:
    """One part: each grid's best point, trend minimum, range and scatter; GRPO's place on each trend;
    at how many ratios the 32-step fine-tune's dev loss is below the 64-step one's."""
    learned = float(run["grpo"]["learned"]["prune_ratio"])
    for key, value in grid_config.items():  # the two grids measured alike but for their length
        if key not in IGNORED and key in short["config"] and short["config"][key] != value:
            raise SystemExit(f"yardstick.py: error: {lang} seed {seed}: the 32-step grid ({short['source']}) has "
                             f"{key}={short['config'][key]!r}, the 64-step grid {value!r}")
    long_curve = analysis.grid_loss_curve(run["grid"])
    row: dict[str, Any] = {"lang": lang, "seed": seed, "learned": learned, "source": short["source"],
                           "command": short["command"]}
    for key, curve in (("long", long_curve), ("short", short["curve"])):
        r = np.array([x for x, _ in curve])
        y = np.array([v for _, v in curve])
        trend = analysis.curve_roughness(curve, learned)
        row[key] = {"best": float(r[int(np.argmin(y))]), "trend_min": float(trend["oracle_ratio"]),
                    "range": float(y.max() - y.min()), "min_loss": float(y.min()),
                    "scatter": float(trend["roughness"] / (y.max() - y.min())),
                    "trend_regret": float(trend["smoothed_fraction"])}
    if [round(x, 6) for x, _ in long_curve] != [round(x, 6) for x, _ in short["curve"]]:
        raise SystemExit(f"yardstick.py: error: {lang} seed {seed}: the two grids do not share their ratios")
    # what the as-run time ratio would be with fine-tunes half as long, from the 64-step run's own phases
    # (analysis.cost_model: fine-tunes scale with their length, the rest is fixed); the controller run
    # kept at its 16 steps, or scaled with the fine-tunes (8 steps, the plugin's default steps // 4)
    cm = analysis.cost_model(run["grid"], run["grpo"], 0.0, LONG, CONTROLLER)
    m = SHORT / LONG
    at = lambda d: (m * d["scaled_grid_s"] + d["fixed_grid_s"]) / (m * d["scaled_grasp_s"] + d["fixed_grasp_s"])  # noqa: E731
    row["time_ratio"] = {"measured": float(cm["as_measured"]["ratio"]), "short": float(at(cm["as_measured"])),
                         "short_controller_scaled": float(at(cm["controller_scaled"]["as_measured"]))}
    gaps = [lo - sh for (_, lo), (_, sh) in zip(long_curve, short["curve"])]
    row["short_below"], row["points"] = int(sum(g > 0 for g in gaps)), len(gaps)
    row["gap_min"], row["gap_max"] = float(min(gaps)), float(max(gaps))
    return row


def collect(results: Path = RESULTS) -> list[dict[str, Any]]:
    rows = []
    for lang in LANDSCAPES:
        path = results / f"grasp_vs_grid_regret_{lang}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        shorts = short_curves(lang, results)
        grid_config = ((data.get("arm_specs") or {}).get("grid") or {}).get("plugin_config") or {}
        for seed in sorted(int(s) for s in data["runs"]):
            run = data["runs"][str(seed)]
            if seed in shorts and "grpo" in run and "grid" in run:  # a part run without GRPO has nothing to read
                rows.append(part(lang, seed, run, shorts[seed], grid_config))
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"parts": len(rows)}
    for key in ("long", "short"):
        tr = [r[key]["trend_regret"] for r in rows]
        out[key] = {"median": float(np.median(tr)), "worst": float(max(tr)), "within": sum(t <= TARGET for t in tr)}
    out["all_below"] = sum(r["short_below"] == r["points"] for r in rows)
    out["time_short"] = [min(r["time_ratio"]["short"] for r in rows), max(r["time_ratio"]["short"] for r in rows)]
    out["time_short_scaled"] = [min(r["time_ratio"]["short_controller_scaled"] for r in rows),
                                max(r["time_ratio"]["short_controller_scaled"] for r in rows)]
    return out


def report(rows: list[dict[str, Any]]) -> str:
    lines = ["# The regret scale's yardstick: 64-step against 32-step fine-tunes (issue 12)", "",
             "`python -m benchmarks.yardstick` (from the committed results; nothing trained)", "",
             "Per part: each grid's best point, its trend's minimum (the quadratic through its points), its range "
             "and scatter (std about the trend, as a share of the range); where GRPO's committed ratio lies on each "
             f"trend (0 %: at its minimum; target {TARGET:.0%}); and at how many of the ratios the 32-step fine-tune "
             "ends with a lower dev loss than the 64-step one (gap = 64-step minus 32-step dev loss). GRPO's "
             "controller run does not depend on the fine-tune length, so its ratio is the same against both grids. "
             "Time ratio: the grid's wall time over GRPO's as run, measured at 64 steps; at 32 steps as the "
             "regret report's cost model puts it from the same run's phases (the fine-tunes halved, the rest "
             "as measured; the controller run's training kept at 16 steps, or halved to 8 with its probes as measured).",
             "", "Commands (32-step grids): " + " ; ".join(sorted({f"`{r['command']}`" for r in rows})), "",
             "| part | GRPO learned | 64 steps: best, trend min, range, scatter | GRPO on the 64-step trend | "
             "32 steps: best, trend min, range, scatter | GRPO on the 32-step trend | 32 below 64 | gap | "
             "time ratio as run: 64 steps; 32 steps (controller training 16; 8) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["time_ratio"]
        cells = [f"{r[k]['best']:.3f}, {r[k]['trend_min']:.3f}, {r[k]['range']:.4f}, {r[k]['scatter']:.0%}"
                 for k in ("long", "short")]
        lines.append(f"| {r['lang']} {r['seed']} | {r['learned']:.3f} | {cells[0]} | {r['long']['trend_regret']:.0%} | "
                     f"{cells[1]} | {r['short']['trend_regret']:.0%} | {r['short_below']} of {r['points']} | "
                     f"{r['gap_min']:+.4f} to {r['gap_max']:+.4f} | {t['measured']:.2f}x; {t['short']:.2f}x "
                     f"({t['short_controller_scaled']:.2f}x) |")
    if rows:
        s = summary(rows)
        lines += ["", f"Over {s['parts']} parts, GRPO within {TARGET:.0%} of the trend's range: "
                  f"{s['long']['within']} on the 64-step grids (median {s['long']['median']:.0%}, worst "
                  f"{s['long']['worst']:.0%}), {s['short']['within']} on the 32-step grids (median "
                  f"{s['short']['median']:.0%}, worst {s['short']['worst']:.0%}). The 32-step fine-tune ends below "
                  f"the 64-step one at every ratio in {s['all_below']} of {s['parts']} parts. At 32 steps the as-run time "
                  f"ratio would be {s['time_short'][0]:.2f}x-{s['time_short'][1]:.2f}x "
                  f"({s['time_short_scaled'][0]:.2f}x-{s['time_short_scaled'][1]:.2f}x with the controller run's training halved "
                  "to 8 steps, its probes as measured)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(RESULTS), help="folder of the committed results")
    ap.add_argument("--out", default=str(RESULTS / "yardstick.md"))
    args = ap.parse_args(argv)
    rows = collect(Path(args.results))
    if not rows:
        raise SystemExit("yardstick.py: error: no part has both a 64-step and a 32-step grid "
                         f"in {args.results}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report(rows))
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
