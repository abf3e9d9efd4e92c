"""benchmarks/yardstick.py: the 64-step and 32-step grids side by side, on synthetic and committed results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import yardstick
from benchmarks.grasp_vs_grid import analysis

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RATIOS = [0.9 * i / 7 for i in range(8)]


def _write(folder: Path, *, short_lang: str = "ar", short_ratios=RATIOS, short_dev: int = 300,
           grpo_seeds=(0, 1)) -> tuple[list[float], list[float]]:
    """A committed-looking pair: a 64-step grid whose minimum is at 0.386 (GRPO learned 0.9), a 32-step
    landscape for seed 0 (minimum near 0.771), and a trajectory file that also holds seed 0 (ignored: the
    32-step grid wins) and seed 1 at 32 of its 64 steps."""
    long = [1.0 + (r - 0.386) ** 2 + 0.002 * (i % 2) for i, r in enumerate(RATIOS)]
    short = [0.7 + 0.5 * (r - 0.771) ** 2 - 0.001 * (i % 3) for i, r in enumerate(RATIOS)]
    grid = {"grid_points": [{"value": [r], "dev_score": -v} for r, v in zip(RATIOS, long)],
            "metrics": {"dev_loss": min(long)}, "wall_s": 1000.0, "phases": {"train_s": 800.0, "final_train_s": 100.0}}
    grpo = {"learned": {"prune_ratio": 0.9}, "wall_s": 250.0,
            "phases": {"train_s": 20.0, "final_train_s": 100.0, "probe_s": 30.0}}
    runs = {str(s): {"grid": grid, **({"grpo": grpo} if s in grpo_seeds else {})} for s in (0, 1)}
    specs = {"grid": {"plugin_config": {"dev": 300, "steps": 64, "source_adapter": "/gone/src"}}}
    (folder / "grasp_vs_grid_regret_ar.json").write_text(json.dumps({"runs": runs, "arm_specs": specs}))
    land = {"command": "landscape 32", "config": {"lang": short_lang, "steps": 32, "dev": short_dev, "source_adapter": None},
            "seeds": [{"seed": 0, "ratios": short_ratios, "grid_dev_loss": short}]}  # its length from the config
    (folder / "ratio_landscape_default_regret32.json").write_text(json.dumps(land))
    traj = {"command": "trajectory", "config": {"lang": "ar", "steps": 64},
            "seeds": [{"seed": s, "ratios": RATIOS, "fine_tune_steps": 64, "grid_dev_loss": long,
                       "trajectory": [{"steps": 16, "dev_loss": long}, {"steps": 32, "dev_loss": [v - 0.1 for v in long]}]}
                      for s in (0, 1)]}
    (folder / "ratio_landscape_default_regret_traj.json").write_text(json.dumps(traj))
    return long, short


def test_each_part_reads_grpos_ratio_off_both_trends(tmp_path):
    long, short = _write(tmp_path)
    rows = yardstick.collect(tmp_path)
    assert [(r["lang"], r["seed"], r["source"]) for r in rows] == [
        ("ar", 0, "ratio_landscape_default_regret32.json"), ("ar", 1, "ratio_landscape_default_regret_traj.json")]
    r0, r1 = rows
    assert r0["long"]["trend_regret"] == pytest.approx(
        analysis.curve_roughness(list(zip(RATIOS, long)), 0.9)["smoothed_fraction"])
    assert r0["short"]["trend_regret"] == pytest.approx(
        analysis.curve_roughness(list(zip(RATIOS, short)), 0.9)["smoothed_fraction"])
    assert r0["long"]["trend_regret"] > 0.5 > r0["short"]["trend_regret"]  # 0.9 is far from 0.386, near 0.771
    assert r0["long"]["best"] == pytest.approx(RATIOS[3]) and r0["short"]["best"] == pytest.approx(RATIOS[6])
    assert r0["short_below"] == 8 and r0["points"] == 8
    assert r1["short_below"] == 8 and r1["gap_min"] == pytest.approx(0.1) == r1["gap_max"]
    assert r1["short"]["trend_regret"] == pytest.approx(r1["long"]["trend_regret"])  # a shifted copy
    # halved fine-tunes: the grid (900 s of them, 100 s fixed) against GRPO (100 s final, 150 s fixed, 20 s of it
    # the controller run's training, which the scaled variant halves too)
    assert r0["time_ratio"] == pytest.approx({"measured": 4.0, "short": 550 / 200, "short_controller_scaled": 550 / 190})
    md = yardstick.report(rows)
    assert "| ar 0 | 0.900 |" in md and "`landscape 32`" in md and "`trajectory`" in md
    assert "at every ratio in 2 of 2 parts" in md and "ratio would be 2.75x-2.75x (2.89x-2.89x" in md


def test_mismatched_inputs_are_one_line_errors(tmp_path):
    _write(tmp_path, short_lang="zh")
    with pytest.raises(SystemExit, match="measured 'zh', not 'ar'"):
        yardstick.collect(tmp_path)
    _write(tmp_path, short_ratios=[r / 2 for r in RATIOS])
    with pytest.raises(SystemExit, match="ar seed 0: the two grids do not share their ratios"):
        yardstick.collect(tmp_path)
    _write(tmp_path, short_dev=64)
    with pytest.raises(SystemExit, match="ar seed 0: the 32-step grid .* has dev=64, the 64-step grid 300"):
        yardstick.collect(tmp_path)
    _write(tmp_path, grpo_seeds=(1,))  # a part run without the GRPO arm: nothing to read off, left out
    assert [r["seed"] for r in yardstick.collect(tmp_path)] == [1]
    with pytest.raises(SystemExit, match="no part has both"):
        yardstick.main(["--results", str(tmp_path / "none"), "--out", str(tmp_path / "y.md")])


def test_the_committed_report_is_what_the_code_reports():
    assert (RESULTS / "yardstick.md").read_text() == yardstick.report(yardstick.collect(RESULTS))


def test_the_readme_quotes_the_yardstick():
    """Every figure of the README's 32-step paragraph, recomputed from the committed results."""
    rows = yardstick.collect(RESULTS)
    s = yardstick.summary(rows)
    readme = " ".join((RESULTS.parent.parent / "README.md").read_text(encoding="utf-8").split())
    names = {"ar": "Arabic", "zh": "Chinese"}
    by_part = {(r["lang"], r["seed"]): r for r in rows}
    assert by_part["ar", 2]["short"]["best"] == 0.0
    zh2 = by_part["zh", 2]
    extra = [f"at every ratio in {s['all_below']} of {s['parts']} parts measured (Chinese seed 2: at "
             f"{zh2['short_below']} of {zh2['points']})",
             f"Chinese seed 2's at {zh2['short']['best']:.2f}, the one part whose probes had turned away from "
             f"pruning (GRPO learned {zh2['learned']:.3f})"]
    assert [round(by_part[k]["short"]["best"], 3) for k in (("ar", 0), ("zh", 0))] == [0.771, 0.771]
    assert all(0.2 < by_part[k]["long"]["best"] < 0.6 for k in (("ar", 0), ("zh", 0)))  # "in the middle"
    per_part = "; ".join(f"{names[r['lang']]} seed {r['seed']} {100 * r['short']['trend_regret']:.0f} % "
                         f"({100 * r['long']['trend_regret']:.0f} % on the 64-step trend)" for r in rows)
    quoted = extra + [
              f"Median {100 * s['short']['median']:.0f} % against {100 * s['long']['median']:.0f} %",
              f"Arabic seed 2's 32-step curve is lowest unpruned", f"Chinese seed 1's at {by_part['zh', 1]['short']['best']:.2f}",
              f"by {min(r['gap_max'] for r in rows):.3f}-{max(r['gap_max'] for r in rows):.3f} at the ratio where they differ most",
              f"within 10 % of the 32-step trend's range in {s['short']['within']} of {s['parts']} "
              f"(on the 64-step trends: {s['long']['within']}): {per_part}",
              f"at {s['time_short'][0]:.1f}x-{s['time_short'][1]:.1f}x ({s['time_short_scaled'][0]:.1f}x-"
              f"{s['time_short_scaled'][1]:.1f}x with the controller run's training halved to 8 steps"]
    # the 32-step grids' own cost, and the look-ahead lever (benchmarks/probe_levers.py) on these trends
    walls = [seed["wall_s"] / 60 for name in ("ratio_landscape_default_regret32.json",
                                                "ratio_landscape_default_regret32_zh.json")
             for seed in json.loads((RESULTS / name).read_text())["seeds"]]
    quoted.append(f"{min(walls):.0f}-{max(walls):.0f} min a seed, Arabic seed 1 taken from the trajectory run")
    from benchmarks import probe_levers

    by = {(r["lang"], r["seed"]): r for r in rows}
    start8 = {(e["lang"], e["seed"]): e for e in probe_levers.load(RESULTS / "probe_levers.json") if e["tag"] == "start8"}
    on32 = {k: analysis.curve_roughness(yardstick.short_curves(k[0], RESULTS)[k[1]]["curve"], e["learned"])
            for k, e in start8.items()}
    a0, z1 = ("ar", 0), ("zh", 1)
    quoted.append(f"{100 * on32[a0]['smoothed_fraction']:.0f} % at Arabic seed 0 and {100 * on32[z1]['smoothed_fraction']:.0f} "
                  f"% at Chinese seed 1 (GRPO {100 * by[a0]['short']['trend_regret']:.0f} % and "
                  f"{100 * by[z1]['short']['trend_regret']:.0f} %)")
    for text in quoted:
        assert text in readme, text
